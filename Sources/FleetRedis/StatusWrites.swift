import FleetCore
import NIOConcurrencyHelpers
import RedisClient

/// Status fields to write, gathered by bucket: one HSET per bucket however many messages and
/// states it takes (``StatusBucket``).
public struct StatusWrites: Sendable {
    /// bucket -> field, value, field, value, ...
    public private(set) var fields: [StatusBucket: [String]] = [:]

    public init() {}

    public var isEmpty: Bool { fields.isEmpty }

    /// Sets message `id`'s `field` (a ``MessageStatusField``) to `value`.
    public mutating func set(_ field: String, _ value: String, of id: String) {
        let bucket = StatusBucket(messageID: id)
        fields[bucket, default: []].append(field)
        fields[bucket, default: []].append(value)
    }

    /// Records that `terminal`'s copy of message `id` reached `state` at `millis`.
    public mutating func record(_ state: MessageState, of id: String, terminal: String, at millis: Int64) {
        set(MessageStatusField.state(state, of: id, terminal: terminal), String(millis), of: id)
    }

    /// One HSET per bucket, in no particular order.
    public func commands(keys: FleetKeys) -> [RedisCommand] {
        fields.map { bucket, fields in RedisCommand("HSET", [keys.statusBucket(bucket)] + fields) }
    }

    /// The states recorded (``record(_:of:terminal:at:)``) as status events, in the order they
    /// were reached.
    public var events: [StatusEvent] {
        var events: [StatusEvent] = []
        for fields in fields.values {
            for index in stride(from: 0, to: fields.count - 1, by: 2) {
                guard let (message, state, terminal) = MessageStatusField.parseState(fields[index]) else { continue }
                events.append(
                    StatusEvent(message: String(message), terminal: String(terminal), state: state, at: Int64(fields[index + 1]) ?? 0))
            }
        }
        events.sort { $0.at < $1.at }
        return events
    }

    /// The XADDs that append the states recorded to the status event stream, kept to about
    /// `length` entries: one entry for the whole write, or one per
    /// ``StatusEvent/maximumPerEntry`` events; none when `length` is 0.
    public func eventCommands(keys: FleetKeys, length: Int) -> [RedisCommand] {
        guard length > 0 else { return [] }
        let events = self.events
        return stride(from: 0, to: events.count, by: StatusEvent.maximumPerEntry).map { start in
            let chunk = events[start..<min(start + StatusEvent.maximumPerEntry, events.count)]
            return RedisCommand(
                "XADD", keys.statusEvents, "MAXLEN", "~", String(length), "*", StatusEvent.entryField, StatusEvent.encode(chunk))
        }
    }
}

/// Gives status buckets their expiry once per bucket and process every ``repeatAfter``
/// seconds rather than with every write: a bucket's expiry is a fixed time, so setting it
/// again only matters when the key was lost and written anew (Redis restarted without its
/// data). A writer whose pipeline failed calls ``reset()``; the repeat covers a restart no
/// command of this process saw.
public final class StatusBucketExpiry: Sendable {
    public enum Rule: Sendable {
        /// `EXPIREAT` `retention` seconds after the bucket's second (the control nodes, which
        /// create statuses).
        case retention(Int64)
        /// `EXPIRE ... NX` with this lifetime: leaves a bucket's expiry alone, and only gives
        /// one to a bucket a late state created anew after the bucket had expired (the push
        /// nodes, which record states into existing statuses).
        case ifNone(Int64)
    }

    private let rule: Rule
    /// bucket -> when its expiry was last sent (unix seconds).
    private let sent = NIOLockedValueBox([StatusBucket: Int64]())
    static let repeatAfter: Int64 = 10

    public init(_ rule: Rule) {
        self.rule = rule
    }

    /// The expiry commands `buckets` still need now.
    public func commands(for buckets: some Sequence<StatusBucket>, keys: FleetKeys, nowSeconds: Int64 = FleetClock.nowSeconds())
        -> [RedisCommand]
    {
        let due = sent.withLockedValue { sent in
            var due: [StatusBucket] = []
            for bucket in buckets where nowSeconds - (sent[bucket] ?? .min / 2) >= Self.repeatAfter {
                sent[bucket] = nowSeconds
                due.append(bucket)
            }
            if sent.count > 4096 { sent = sent.filter { nowSeconds - $0.value < Self.repeatAfter } }
            return due
        }
        return due.map { bucket in
            switch rule {
            case .retention(let retention):
                RedisCommand("EXPIREAT", keys.statusBucket(bucket), String(bucket.expiresAt(retention: retention, nowSeconds: nowSeconds)))
            case .ifNone(let lifetime):
                RedisCommand("EXPIRE", keys.statusBucket(bucket), String(lifetime), "NX")
            }
        }
    }

    /// Forgets what was sent (after Redis reconnected: it may have lost the keys).
    public func reset() {
        sent.withLockedValue { $0 = [:] }
    }
}
