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

    var all: [SessionHandle] { sessions.withLockedValue { Array($0.values) } }
    var count: Int { sessions.withLockedValue { $0.count } }
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
}
