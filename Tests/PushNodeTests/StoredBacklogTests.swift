import NIOCore
import Testing

@testable import PushNode

/// The stored-list cursor against a list modelled in memory, the way Redis holds it.
@Suite struct StoredBacklogTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    /// A backlog whose first read returned `ids` (a registration), all handled.
    func backlog(handling ids: [String], window: Int) -> StoredBacklog {
        var backlog = StoredBacklog()
        let first = backlog.nextRead(room: window, window: window)!
        _ = backlog.readCompleted(first, ids: ids, sent: [:], now: start)
        for id in ids { backlog.handled(id) }
        return backlog
    }

    /// `LRANGE list start stop` as Redis answers it.
    static func lrange(_ list: [String], _ read: StoredBacklog.Read) -> [String?] {
        guard read.start < list.count else { return [] }
        return Array(list[read.start..<min(list.count, read.start + read.count)])
    }

    @Test func aBacklogLongerThanManyWindowsDrainsInOrderAsAcknowledgementsFreeTheWindow() {
        var list = (0..<1000).map { "m\($0)" }
        var backlog = StoredBacklog()
        var inflight: [String] = []
        var delivered: [String] = []
        let window = 32
        var reads = 0
        // Each step reads or takes one acknowledgement: far fewer than this many.
        for step in 0... {
            guard step < 10_000 else {
                Issue.record("the backlog did not drain in 10,000 steps")
                return
            }
            if let read = backlog.nextRead(room: window - inflight.count, window: window) {
                reads += 1
                #expect(read.count <= window + 1)
                let reply = Self.lrange(list, read)
                guard case .entries(let fresh) = backlog.readCompleted(read, ids: reply, sent: read.withSent ? [:] : nil, now: start)
                else {
                    Issue.record("unexpected mismatch")
                    return
                }
                for id in reply[fresh].compactMap({ $0 }) {
                    guard inflight.count < window else {
                        backlog.stopped()
                        break
                    }
                    inflight.append(id)
                    delivered.append(id)
                    backlog.handled(id)
                }
                continue
            }
            guard !inflight.isEmpty else { break }
            // The terminal acknowledges the oldest; the node removes it from the list.
            let done = inflight.removeFirst()
            list.removeAll { $0 == done }
            backlog.removed(done)
        }
        #expect(delivered == (0..<1000).map { "m\($0)" })
        #expect(list.isEmpty)
        #expect(backlog.caughtUp)
        // In batches of half a window, not one read per acknowledgement.
        #expect(reads < 1000 / 16 + 4)
    }

    @Test func aReadStartsAfterTheHandledPrefixAndChecksItsLastEntry() {
        var backlog = StoredBacklog()
        let first = backlog.nextRead(room: 4, window: 4)!
        #expect(first == StoredBacklog.Read(start: 0, count: 4, anchor: nil, withSent: true))
        #expect(backlog.nextRead(room: 4, window: 4) == nil, "one read at a time")
        #expect(backlog.readCompleted(first, ids: ["a", "b", "c", "d"], sent: ["a": 7], now: start) == .entries(0..<4))
        let redelivery = backlog.takeRedelivery("a")
        let again = backlog.takeRedelivery("a")
        #expect(redelivery == 7)
        #expect(again == nil, "used once")
        for id in ["a", "b", "c", "d"] { backlog.handled(id) }
        #expect(!backlog.caughtUp, "a full read may have more behind it")
        #expect(backlog.nextRead(room: 1, window: 4) == nil, "waits for half the window")
        backlog.removed("a")
        backlog.removed("b")
        let next = backlog.nextRead(room: 2, window: 4)!
        #expect(next == StoredBacklog.Read(start: 1, count: 3, anchor: "d", withSent: false))
        #expect(backlog.readCompleted(next, ids: ["d", "e"], sent: nil, now: start) == .entries(1..<2))
        backlog.handled("e")
        #expect(backlog.caughtUp, "a short read reached the end")
        #expect(backlog.nextRead(room: 4, window: 4) == nil)
    }

    @Test func aHeadChangedByAnotherWriterIsReadAgainFromTheHead() {
        var backlog = backlog(handling: ["a", "b"], window: 2)
        // The cap trimmed "a" from the list: "b" is now at index 0, not 1.
        let anchored = backlog.nextRead(room: 0, window: 2)
        #expect(anchored == nil, "window full")
        backlog.removed("b")
        let read = backlog.nextRead(room: 1, window: 2)!
        #expect(read.anchor == "a")
        #expect(backlog.readCompleted(read, ids: ["c", "d"], sent: nil, now: start) == .mismatch)
        let rescan = backlog.nextRead(room: 1, window: 2)!
        #expect(rescan == StoredBacklog.Read(start: 0, count: 2, anchor: nil, withSent: false))
        #expect(backlog.readCompleted(rescan, ids: ["a", "c"], sent: nil, now: start) == .entries(0..<2))
    }

    @Test func entriesDeliveredFromWakesOutOfListOrderAreCaughtByTheAnchor() {
        // The list is [a, b, c]; "a" came by a read, "c" by a wake whose order beat "b"'s.
        var backlog = backlog(handling: ["a"], window: 4)
        let fromWake = backlog.mayDeliverFromWake(now: start + .seconds(3))
        #expect(fromWake)
        backlog.handled("c")
        backlog.woken()
        let read = backlog.nextRead(room: 2, window: 4)!
        #expect(read == StoredBacklog.Read(start: 1, count: 3, anchor: "c", withSent: false))
        #expect(backlog.readCompleted(read, ids: ["b", "c"], sent: nil, now: start) == .mismatch)
        let rescan = backlog.nextRead(room: 2, window: 4)!
        #expect(rescan == StoredBacklog.Read(start: 0, count: 4, anchor: nil, withSent: false))
        #expect(backlog.readCompleted(rescan, ids: ["a", "b", "c"], sent: nil, now: start) == .entries(0..<3))
        #expect(backlog.caughtUp)
    }

    @Test func anEntryHandledAlreadyAfterAMatchingAnchorIsAMismatchToo() {
        var backlog = backlog(handling: ["a", "b"], window: 4)
        backlog.woken()
        let read = backlog.nextRead(room: 2, window: 4)!
        #expect(backlog.readCompleted(read, ids: ["b", "a"], sent: nil, now: start) == .mismatch)
    }

    @Test func wakeEventsAreTrustedOnlyWhenCaughtUpAndNoRecentReadCouldHaveReturnedTheirEntries() {
        var backlog = StoredBacklog()
        let beforeRead = backlog.mayDeliverFromWake(now: start)
        #expect(!beforeRead, "not caught up before the first read")
        let first = backlog.nextRead(room: 4, window: 4)!
        let duringRead = backlog.mayDeliverFromWake(now: start)
        #expect(!duringRead, "a read is under way")
        _ = backlog.readCompleted(first, ids: ["a"], sent: [:], now: start)
        backlog.handled("a")
        #expect(!backlog.caughtUp, "the wake during the read asks for another one")
        let second = backlog.nextRead(room: 3, window: 4)!
        _ = backlog.readCompleted(second, ids: ["a"], sent: nil, now: start)
        #expect(backlog.caughtUp)
        let soonAfter = backlog.mayDeliverFromWake(now: start + .seconds(1))
        #expect(!soonAfter, "the first read returned entries one second ago")
        let third = backlog.nextRead(room: 3, window: 4)!
        _ = backlog.readCompleted(third, ids: ["a"], sent: nil, now: start + .seconds(1))
        let later = backlog.mayDeliverFromWake(now: start + StoredBacklog.wakeGuard + .milliseconds(1))
        #expect(later)
    }

    @Test func aWindowOfOneReadsOneEntryAtATime() {
        var backlog = StoredBacklog()
        var list = ["a", "b", "c"]
        var delivered: [String] = []
        while let read = backlog.nextRead(room: 1, window: 1) {
            let reply = Self.lrange(list, read)
            guard case .entries(let fresh) = backlog.readCompleted(read, ids: reply, sent: [:], now: start) else { break }
            #expect(fresh.count <= 1)
            for id in reply[fresh].compactMap({ $0 }) {
                delivered.append(id)
                list.removeAll { $0 == id }
                backlog.removed(id)
            }
        }
        #expect(delivered == ["a", "b", "c"])
    }

    @Test func aFailedReadIsIssuedAgainWhenWoken() {
        var backlog = StoredBacklog()
        let first = backlog.nextRead(room: 2, window: 2)!
        backlog.readFailed()
        #expect(!backlog.isReading)
        backlog.woken()
        let again = backlog.nextRead(room: 2, window: 2)
        #expect(again == first, "the same read, the sent hash included")
    }

    @Test func earlierDeliveriesOfEntriesNoLongerListedAreForgottenOnceCaughtUp() {
        var backlog = StoredBacklog()
        let read = backlog.nextRead(room: 4, window: 4)!
        _ = backlog.readCompleted(read, ids: ["a"], sent: ["a": 1, "gone": 2], now: start)
        #expect(backlog.caughtUp)
        #expect(backlog.redeliveries == ["a": 1])
    }
}
