import NIOConcurrencyHelpers
import NIOCore

/// The connections this node holds, by terminal id; safe from any thread.
///
/// Handlers stay on their own event loop: the registry hands out a ``SessionHandle`` whose
/// `execute` runs a closure with the handler on that loop.
final class SessionRegistry: Sendable {
    private let sessions = NIOLockedValueBox([String: SessionHandle]())

    /// Registers `handle`, returning the handle it replaced (a local takeover).
    func register(_ handle: SessionHandle) -> SessionHandle? {
        sessions.withLockedValue { $0.updateValue(handle, forKey: handle.terminal) }
    }

    /// Removes the entry for `handle.terminal` if it is still `handle`.
    func remove(_ handle: SessionHandle) {
        sessions.withLockedValue { sessions in
            if sessions[handle.terminal]?.epoch == handle.epoch { sessions[handle.terminal] = nil }
        }
    }

    func handle(for terminal: String) -> SessionHandle? {
        sessions.withLockedValue { $0[terminal] }
    }

    /// The handles of `terminals` (nil where none), under one lock.
    func handles<S: Sequence>(for terminals: S) -> [SessionHandle?] where S.Element == String {
        sessions.withLockedValue { sessions in terminals.map { sessions[$0] } }
    }

    var all: [SessionHandle] { sessions.withLockedValue { Array($0.values) } }
    var count: Int { sessions.withLockedValue { $0.count } }

    /// Wakes that found no session, by terminal and time. A terminal whose registration is
    /// under way (its register script read the list, its reply has not come back) is not
    /// findable yet: a wake for an entry stored in that gap would be lost, so the session
    /// checks here once it is registered. Bounded: past ``missedWakeLimit`` entries, those
    /// older than ``missedWakeLifetime`` go, then all.
    private let missedWakes = NIOLockedValueBox([String: NIODeadline]())
    static let missedWakeLimit = 10_000
    static let missedWakeLifetime = TimeAmount.seconds(30)

    /// Records that a wake for `terminal` found no session.
    func missedWake(for terminal: String, at now: NIODeadline = .now()) {
        missedWakes.withLockedValue { missed in
            if missed.count >= Self.missedWakeLimit {
                missed = missed.filter { now - $0.value < Self.missedWakeLifetime }
                if missed.count >= Self.missedWakeLimit { missed.removeAll(keepingCapacity: true) }
            }
            missed[terminal] = now
        }
    }

    /// Whether a wake for `terminal` found no session at or after `since`; forgets it.
    func takeMissedWake(for terminal: String, since: NIODeadline) -> Bool {
        guard let at = missedWakes.withLockedValue({ $0.removeValue(forKey: terminal) }) else { return false }
        return at >= since
    }

    var missedWakeCount: Int { missedWakes.withLockedValue { $0.count } }
}

/// A registered connection: its terminal, epoch, and a way to reach its handler.
struct SessionHandle: Sendable {
    let terminal: String
    let epoch: String
    /// Unix milliseconds of the registration.
    let connectedAt: Int64
    let handler: NIOLoopBound<MQTTConnectionHandler>

    /// Runs `body` with the handler on the handler's event loop.
    func execute(_ body: @escaping @Sendable (MQTTConnectionHandler) -> Void) {
        let handler = self.handler
        handler.eventLoop.execute { body(handler.value) }
    }

    /// Runs `body` with each handler and its value on the handler's event loop: one task per
    /// event loop, not one per handle (a wake event names hundreds of terminals).
    static func execute<Value: Sendable>(
        _ items: [(handle: SessionHandle, value: Value)], _ body: @escaping @Sendable (MQTTConnectionHandler, Value) -> Void
    ) {
        var byLoop: [ObjectIdentifier: (loop: any EventLoop, items: [(handle: SessionHandle, value: Value)])] = [:]
        for item in items {
            let loop = item.handle.handler.eventLoop
            byLoop[ObjectIdentifier(loop), default: (loop, [])].items.append(item)
        }
        for (_, group) in byLoop {
            let items = group.items
            group.loop.execute {
                for item in items { body(item.handle.handler.value, item.value) }
            }
        }
    }
}
