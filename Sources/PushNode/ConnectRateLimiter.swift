import NIOConcurrencyHelpers
import NIOCore

/// Spreads session registrations out in time during a reconnect storm.
///
/// Each admitted CONNECT takes the next free slot, `1/rate` seconds after the previous one;
/// up to `burst` slots may be taken at once. A CONNECT whose slot is more than `maximumWait`
/// away is refused (CONNACK "server unavailable" / 0x9F), so clients back off instead of
/// piling up.
final class ConnectRateLimiter: Sendable {
    private let interval: TimeAmount
    private let burst: Int64
    private let maximumWait: TimeAmount
    private let nextSlot = NIOLockedValueBox(NIODeadline.uptimeNanoseconds(0))

    /// `rate` connects per second; 0 disables limiting.
    init?(rate: Int, burst: Int = 1_000, maximumWait: TimeAmount = .seconds(10)) {
        guard rate > 0 else { return nil }
        self.interval = .nanoseconds(1_000_000_000 / Int64(rate))
        self.burst = Int64(burst)
        self.maximumWait = maximumWait
    }

    /// The delay before this CONNECT may register, or nil if it should be refused.
    func admit(now: NIODeadline = .now()) -> TimeAmount? {
        nextSlot.withLockedValue { next in
            let earliest = now - .nanoseconds(interval.nanoseconds * (burst - 1))
            let slot = max(next, earliest)
            let delay = slot > now ? slot - now : .zero
            guard delay <= maximumWait else { return nil }
            next = slot + interval
            return delay
        }
    }
}
