import NIOConcurrencyHelpers
import NIOCore

/// Closes the connections of one event loop whose keep alive ran out: one sweep a second over
/// them, instead of a scheduled task per connection (a promise, a task and a closure: ~220
/// bytes for every idle terminal). A connection is closed at most a second after 1.5 times
/// its keep alive passed without a packet.
///
/// Confined to `eventLoop`: every call is made on it (the box checks).
final class KeepAliveSweeper: Sendable {
    private let eventLoop: any EventLoop
    private let state: NIOLoopBoundBox<Members>

    private struct Members {
        var handlers: [MQTTConnectionHandler] = []
        var task: RepeatedTask?
    }

    private var members: [MQTTConnectionHandler] {
        get { state.value.handlers }
        _modify { yield &state.value.handlers }
    }

    private var task: RepeatedTask? {
        get { state.value.task }
        _modify { yield &state.value.task }
    }

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.state = NIOLoopBoundBox.makeBoxSendingValue(Members(), eventLoop: eventLoop)
    }

    func add(_ handler: MQTTConnectionHandler) {
        eventLoop.preconditionInEventLoop()
        guard handler.sweepSlot < 0 else { return }
        handler.sweepSlot = members.count
        members.append(handler)
        if task == nil {
            task = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in self.sweep() }
        }
    }

    func remove(_ handler: MQTTConnectionHandler) {
        eventLoop.preconditionInEventLoop()
        let slot = handler.sweepSlot
        guard slot >= 0, slot < members.count, members[slot] === handler else { return }
        let last = members.removeLast()
        if last !== handler {
            members[slot] = last
            last.sweepSlot = slot
        }
        handler.sweepSlot = -1
    }

    private func sweep() {
        let now = NIODeadline.now()
        // Closing a connection removes it from `members`: collect first, then close.
        let expired = members.filter { $0.keepAliveExpired(at: now) }
        for handler in expired { handler.keepAliveTimedOut() }
    }
}

/// The sweeper of each event loop, made when a loop first needs one.
final class KeepAliveSweepers: Sendable {
    private let sweepers = NIOLockedValueBox([ObjectIdentifier: KeepAliveSweeper]())

    func sweeper(for eventLoop: any EventLoop) -> KeepAliveSweeper {
        sweepers.withLockedValue { sweepers in
            if let sweeper = sweepers[ObjectIdentifier(eventLoop)] { return sweeper }
            let sweeper = KeepAliveSweeper(eventLoop: eventLoop)
            sweepers[ObjectIdentifier(eventLoop)] = sweeper
            return sweeper
        }
    }
}
