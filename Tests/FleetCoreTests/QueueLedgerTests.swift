import FleetCore
import Testing

@Suite struct QueueLedgerTests {
    let minute: Int64 = 60_000
    let now: Int64 = 1_800_000_000_000

    @Test func entriesAreCountedByTheirExpiryBucketAndWhatLeftIsTakenOff() {
        let ledger = QueueLedger()
        ledger.entered(expiresAt: now + 5 * minute, count: 3)
        ledger.entered(expiresAt: now + 25 * minute)
        ledger.left(expiresAt: now + 5 * minute)
        ledger.entered(expiresAt: 0, count: 7)  // no expiry: not counted
        let taken = ledger.take()
        #expect(taken == [QueueLedger.bucket(now + 5 * minute): 2, QueueLedger.bucket(now + 25 * minute): 1])
        #expect(ledger.take().isEmpty, "taken once")
        ledger.restore(taken)
        ledger.left(expiresAt: now + 25 * minute)
        #expect(ledger.take() == [QueueLedger.bucket(now + 5 * minute): 2], "a bucket back at zero is left out")
    }

    @Test func passedBucketsAreNotQueuedAndAreNamedForDeletion() {
        let current = QueueLedger.bucket(now)
        let fields = [
            String(current - 2): "40", String(current - 1): "9", String(current): "5", String(current + 1): "2", String(current + 144): "1",
            "junk": "3",
        ]
        let reading = QueueLedger.queued(in: fields, nowMillis: now)
        #expect(reading.queued == 8)
        #expect(reading.passed == [String(current - 2), String(current - 1)].sorted())
        #expect(QueueLedger.queued(in: [String(current): "-4"], nowMillis: now).queued == 0, "never below zero")
    }
}
