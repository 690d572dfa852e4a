import NIOCore
import Testing

@testable import PushNode

struct ConnectRateLimiterTests {
    @Test func burstIsImmediateThenSlotsAreSpacedByTheRate() throws {
        let limiter = try #require(ConnectRateLimiter(rate: 100, burst: 3, maximumWait: .seconds(1)))
        let start = NIODeadline.uptimeNanoseconds(10_000_000_000)
        // Three at once within the burst, then 10 ms apart.
        #expect(limiter.admit(now: start) == .zero)
        #expect(limiter.admit(now: start) == .zero)
        #expect(limiter.admit(now: start) == .zero)
        #expect(limiter.admit(now: start) == .milliseconds(10))
        #expect(limiter.admit(now: start) == .milliseconds(20))
        // Time passing frees slots again.
        #expect(limiter.admit(now: start + .seconds(5)) == .zero)
    }

    @Test func refusesWhenTheWaitWouldBeTooLong() throws {
        let limiter = try #require(ConnectRateLimiter(rate: 10, burst: 1, maximumWait: .milliseconds(250)))
        let now = NIODeadline.uptimeNanoseconds(10_000_000_000)
        var admitted = 0
        while limiter.admit(now: now) != nil { admitted += 1 }
        // Slots at 0, 100 and 200 ms; the next one (300 ms) is past the wait.
        #expect(admitted == 3)
    }

    @Test func zeroRateMeansNoLimiter() {
        #expect(ConnectRateLimiter(rate: 0) == nil)
    }
}
