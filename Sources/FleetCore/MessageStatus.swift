/// Where message statuses live in Redis: one hash per second of creation and shard
/// (``StatusBucket``), shared by the messages created in that second, so a node records the
/// states of a tick's messages with one HSET per bucket rather than commands per message, and
/// a bucket expires once, as a whole, `--status-retention` after its second.
///
/// Each message has a few fields in its bucket, all starting with its id
/// (``MessageStatusField``): its record (``MessageStatusRecord``: kind, qos, ttl, times and
/// targets), `complete` once accepted, and each target's states. A state has a field of its
/// own per terminal (`<id>|a|<terminal>` = when it was acknowledged), so recording one needs
/// no read and two writers never undo each other: the reader takes the most advanced state,
/// and between final ones the earliest (``MessageStatusField/state(of:)``).
public struct StatusBucket: Hashable, Sendable {
    /// Buckets per second: the states of one second spread over this many keys (and Redis
    /// Cluster slots).
    public static let shards = 4

    /// Unix second the bucket's messages were created in (from their ids).
    public let second: Int64
    public let shard: Int

    public init(second: Int64, shard: Int) {
        self.second = second
        self.shard = shard
    }

    /// The bucket of message `id`: its creation second read from the id (a control node's id
    /// is hex milliseconds and 16 hex digits, a command stream entry's decimal milliseconds and
    /// a sequence number); its shard from the last hex digit of a control node's id (which
    /// gives a batch's ids one shard: ``FleetClock/newMessageIDs(_:)``), else from a hash of
    /// the id. An id in neither form goes to second 0; what matters is that every node finds
    /// the same bucket for the same id.
    public init(messageID id: String) {
        let utf8 = id.utf8
        var millis: Int64 = 0
        var shard: Int?
        if let dash = utf8.firstIndex(of: UInt8(ascii: "-")) {
            let time = id[..<dash]
            let sequence = id[id.index(after: dash)...]
            let hex = sequence.utf8.count == 16 && time.utf8.count <= 15
            millis = Int64(time, radix: hex ? 16 : 10) ?? 0
            if hex, let last = sequence.last?.hexDigitValue { shard = last % Self.shards }
        }
        if shard == nil {
            var hash: UInt32 = 2_166_136_261
            for byte in utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
            shard = Int(hash % UInt32(Self.shards))
        }
        self.shard = shard!
        second = millis / 1000
    }

    /// When the bucket may go: `retention` seconds after its second ends, and never sooner
    /// than `retention` from `now` (an id from the distant past, such as a stream entry added
    /// with an explicit id).
    public func expiresAt(retention: Int64, nowSeconds: Int64) -> Int64 {
        max(second + 1, nowSeconds) + retention
    }
}

extension FleetKeys {
    /// HASH of the statuses of the messages created in one second, one shard of them
    /// (``StatusBucket``).
    public func statusBucket(_ bucket: StatusBucket) -> String { "\(prefix){s:\(bucket.second):\(bucket.shard)}:status" }
}

/// The fields a message has in its status bucket. Message ids hold no `|` and terminal ids
/// neither, so the fields of different messages never meet.
public enum MessageStatusField {
    /// The message's ``MessageStatusRecord``.
    public static func record(_ id: String) -> String { id }
    /// `1` once the push was accepted (every target's entry stored; a topic push or broadcast
    /// sent). A record without it is an attempt that failed part way.
    public static func complete(_ id: String) -> String { id + "|c" }
    /// Why a command stream entry was refused.
    public static func error(_ id: String) -> String { id + "|err" }
    /// Push nodes a topic push or broadcast went to.
    public static func nodes(_ id: String) -> String { id + "|n" }
    /// Absent persistent sessions a topic push was stored for.
    public static func storedForSessions(_ id: String) -> String { id + "|s" }
    /// Terminals a broadcast was written to (added up by the nodes).
    public static func reach(_ id: String) -> String { id + "|r" }
    /// A scheduled push before it goes out: `dueMillis|kind|qos|ttl|createdAt|targets`.
    public static func scheduled(_ id: String) -> String { id + "|sched" }
    /// When the push was cancelled (unix ms): `DELETE /v1/messages/{id}`.
    public static func cancelled(_ id: String) -> String { id + "|cancelled" }

    /// The field recording that `terminal`'s copy of message `id` reached `state` (its
    /// value: when, in unix milliseconds). `queued` has none: a target without states waits.
    public static func state(_ state: MessageState, of id: String, terminal: String) -> String {
        "\(id)|\(letter(state))|\(terminal)"
    }

    /// The states that have fields, most advanced last (between final ones: the order a tie
    /// goes in).
    public static let recordedStates: [MessageState] = [.delivered, .acknowledged, .expired, .dropped, .replaced, .withdrawn]

    /// A terminal's state from the values of its ``recordedStates`` fields (nil where absent):
    /// the earliest final state, else `delivered`, else `queued`.
    public static func state(of values: some Collection<String?>) -> MessageState {
        var best: (state: MessageState, at: Int64)?
        for (state, value) in zip(recordedStates, values) {
            guard let value else { continue }
            let at = Int64(value) ?? .max
            if let current = best {
                if state.rank > current.state.rank || (state.rank == current.state.rank && at < current.at) { best = (state, at) }
            } else {
                best = (state, at)
            }
        }
        return best?.state ?? .queued
    }

    /// The per-state counts of a unicast push from its targets' states: `delivered` counts
    /// the targets that got it (acknowledged ones included), `queued` those still waiting.
    public static func counts(ofTargets states: some Sequence<MessageState>) -> [String: Int64] {
        var counts = Dictionary(uniqueKeysWithValues: MessageState.allCases.map { ($0.rawValue, Int64(0)) })
        for state in states {
            counts[state.rawValue, default: 0] += 1
            if state == .acknowledged { counts[MessageState.delivered.rawValue, default: 0] += 1 }
        }
        return counts
    }

    /// The message, state and terminal of a ``state(_:of:terminal:)`` field; nil for the
    /// message's other fields.
    public static func parseState(_ field: String) -> (message: Substring, state: MessageState, terminal: Substring)? {
        let parts = field.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let state = recordedStates.first(where: { letter($0) == parts[1] }) else { return nil }
        return (parts[0], state, parts[2])
    }

    private static func letter(_ state: MessageState) -> String {
        switch state {
        case .queued: "q"
        case .delivered: "d"
        case .acknowledged: "a"
        case .expired: "e"
        case .dropped: "x"
        case .replaced: "p"
        case .withdrawn: "w"
        }
    }
}

/// What a message's status says about the message itself, in one field of its bucket:
/// `kind|qos|ttl|createdAt|expiresAt|target,target,...`.
public struct MessageStatusRecord: Hashable, Sendable {
    /// `unicast`, `topic` or `broadcast`.
    public var kind: String
    public var qos: Int
    /// Seconds (0: online only).
    public var ttl: Int
    /// Unix milliseconds.
    public var createdAt: Int64
    /// When the stored entries expire (unix ms; 0 when nothing is stored).
    public var expiresAt: Int64
    /// The terminals a unicast push addresses (empty for a topic push or broadcast).
    public var targets: [String]

    public init(kind: String, qos: Int, ttl: Int, createdAt: Int64, expiresAt: Int64, targets: [String] = []) {
        self.kind = kind
        self.qos = qos
        self.ttl = ttl
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.targets = targets
    }

    public var encoded: String {
        "\(kind)|\(qos)|\(ttl)|\(createdAt)|\(expiresAt)|" + targets.joined(separator: ",")
    }

    /// Nil for text that is not a record.
    public init?(decoding text: String) {
        let parts = text.split(separator: "|", maxSplits: 5, omittingEmptySubsequences: false)
        guard parts.count == 6, let qos = Int(parts[1]), let ttl = Int(parts[2]), let createdAt = Int64(parts[3]),
            let expiresAt = Int64(parts[4])
        else { return nil }
        self.init(
            kind: String(parts[0]), qos: qos, ttl: ttl, createdAt: createdAt, expiresAt: expiresAt,
            targets: parts[5].isEmpty ? [] : parts[5].split(separator: ",").map(String.init))
    }
}
