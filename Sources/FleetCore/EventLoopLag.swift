import Metrics
import NIOCore

/// How late each event loop runs a task due at a known time: a loop that is busy (or blocked)
/// delays every connection on it by as much. Recorded into the histogram
/// `pushfleet_event_loop_lag_seconds` every `interval`, until the loop shuts down.
public enum EventLoopLag {
    public static func watch(_ group: any EventLoopGroup, interval: TimeAmount = .milliseconds(500)) {
        let lag = Timer(label: "pushfleet_event_loop_lag_seconds")
        for loop in group.makeIterator() {
            schedule(on: loop, interval: interval, lag: lag)
        }
    }

    private static func schedule(on loop: any EventLoop, interval: TimeAmount, lag: Timer) {
        let due = NIODeadline.now() + interval
        loop.scheduleTask(deadline: due) {
            lag.recordNanoseconds(max(0, (NIODeadline.now() - due).nanoseconds))
            schedule(on: loop, interval: interval, lag: lag)
        }
    }
}
