import Foundation
import Synchronization

/// Wall-clock helpers and id generation.
public enum FleetClock {
    /// Unix time in milliseconds.
    public static func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
    /// Unix time in seconds.
    public static func nowSeconds() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// A new message id: milliseconds and 64 bits, both hex, sortable by time. The 64 bits are
    /// a random number drawn once per process plus four times a count of the ids it made, plus
    /// the id's status shard (``StatusBucket``, read back from the last hex digit): unique within
    /// the process, and across processes as long as two random starts are not within a few
    /// billion of each other, without a `getrandom` call per id.
    public static func newMessageID() -> String {
        newMessageID(atMillis: nowMillis())
    }

    /// A new message id whose time part is `millis` (a scheduled push's: its status bucket is
    /// the second it is due, so its status is kept as long after it went out as any push's).
    public static func newMessageID(atMillis millis: Int64) -> String {
        let first = idCounter.add(1, ordering: .relaxed).newValue - 1
        return messageID(ms: String(UInt64(max(0, millis)), radix: 16), number: first, shard: nextShard())
    }

    /// `count` new message ids that share a status shard, so a batch writes its statuses into
    /// one bucket per second rather than one per shard. Successive calls go round the shards.
    public static func newMessageIDs(_ count: Int) -> [String] {
        let ms = String(UInt64(nowMillis()), radix: 16)
        let first = idCounter.add(UInt64(count), ordering: .relaxed).newValue - UInt64(count)
        let shard = nextShard()
        return (0..<UInt64(count)).map { messageID(ms: ms, number: first + $0, shard: shard) }
    }

    private static func nextShard() -> UInt64 {
        batchCounter.add(1, ordering: .relaxed).newValue % UInt64(StatusBucket.shards)
    }

    /// Id `number` of this process in `shard`: the last hex digit carries the shard.
    private static func messageID(ms: String, number: UInt64, shard: UInt64) -> String {
        let shards = UInt64(StatusBucket.shards)
        let hex = String((idBase & ~(shards - 1)) &+ number &* shards &+ shard, radix: 16)
        return ms + "-" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    private static let idBase = UInt64.random(in: .min ... .max)
    private static let idCounter = Atomic<UInt64>(0)
    private static let batchCounter = Atomic<UInt64>(0)

    /// A new connection epoch: unique across nodes and restarts (it only has to differ between
    /// two connections of one terminal). At most 15 characters, so Swift keeps it inline and
    /// each connection saves a heap allocation: the time in base 36 (8 characters until 2059),
    /// then random base-36 digits to fill (36 bits now).
    public static func newEpoch() -> String {
        let time = String(UInt64(nowMillis()), radix: 36)
        let digits = max(4, 15 - time.count)
        var random = String(UInt64.random(in: 0..<(1 << 62)), radix: 36)
        random = String(random.suffix(digits))
        return time + String(repeating: "0", count: digits - random.count) + random
    }
}
