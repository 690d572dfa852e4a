import NIOCore
import Testing

@testable import PushNode

/// Wakes that find no session (the terminal's registration is under way) are caught up on.
struct SessionRegistryTests {
    @Test func aWakeThatFoundNoSessionIsTakenOnceIfItCameAfterTheRegistrationWentOut() {
        let registry = SessionRegistry()
        let sent = NIODeadline.now()
        registry.missedWake(for: "t", at: sent + .milliseconds(1))
        #expect(registry.takeMissedWake(for: "t", since: sent))
        #expect(!registry.takeMissedWake(for: "t", since: sent))  // once
        // One from before the registration's list read does not count (that read saw it).
        registry.missedWake(for: "u", at: sent - .milliseconds(1))
        #expect(!registry.takeMissedWake(for: "u", since: sent))
        #expect(!registry.takeMissedWake(for: "never", since: sent))
    }

    @Test func missedWakesAreBoundedOnePastTheLimit() {
        let registry = SessionRegistry()
        let old = NIODeadline.now() - SessionRegistry.missedWakeLifetime - .seconds(1)
        for index in 0..<SessionRegistry.missedWakeLimit { registry.missedWake(for: "old-\(index)", at: old) }
        #expect(registry.missedWakeCount == SessionRegistry.missedWakeLimit)
        // One past the limit: the stale ones go.
        registry.missedWake(for: "new")
        #expect(registry.missedWakeCount == 1)
        // All fresh at the limit: everything goes (a wake lost then costs a stall, as before).
        let now = NIODeadline.now()
        for index in 0..<SessionRegistry.missedWakeLimit { registry.missedWake(for: "fresh-\(index)", at: now) }
        registry.missedWake(for: "one-more", at: now)
        #expect(registry.missedWakeCount <= SessionRegistry.missedWakeLimit)
        #expect(registry.takeMissedWake(for: "one-more", since: now))
    }
}
