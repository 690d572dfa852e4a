/// Redis Cluster's key space: 16,384 hash slots, a key's slot the CRC16 (XMODEM) of its hash
/// tag (the first non-empty `{...}`) or of the whole key, and which node serves each slot.
public enum RedisClusterSlots {
    public static let count = 16_384

    /// The slot of `key`.
    public static func slot(of key: some Collection<UInt8>) -> Int {
        Int(crc16(hashTag(of: key)) % UInt16(count))
    }

    public static func slot(of key: String) -> Int { slot(of: Array(key.utf8)) }

    /// The part of `key` that is hashed: what is between its first `{` and the next `}` when
    /// that is not empty, otherwise the whole key.
    static func hashTag<C: Collection<UInt8>>(of key: C) -> C.SubSequence {
        guard let open = key.firstIndex(of: UInt8(ascii: "{")) else { return key[...] }
        let afterOpen = key.index(after: open)
        guard let close = key[afterOpen...].firstIndex(of: UInt8(ascii: "}")), close != afterOpen else { return key[...] }
        return key[afterOpen..<close]
    }

    /// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis Cluster computes it.
    static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ table[Int((crc >> 8) ^ UInt16(byte))]
        }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }

    /// A node of the cluster, as `CLUSTER SLOTS` names it.
    public typealias Node = RedisAddress

    /// Which master serves each slot.
    public struct Map: Sendable, Equatable {
        /// Slot -> index in `nodes` (-1: no node serves it).
        private var owners: [Int16]
        public private(set) var nodes: [Node]

        public init() {
            owners = Array(repeating: -1, count: RedisClusterSlots.count)
            nodes = []
        }

        /// The map a `CLUSTER SLOTS` reply describes: `[[start, end, [host, port, id, ...],
        /// replica, ...], ...]`. Throws on anything else. An empty host (a node that has not
        /// learnt its own address: one never introduced to another) is `askedHost`, the host
        /// the reply came from, as Redis's documentation tells clients to do.
        public init(clusterSlots reply: RedisReply, askedHost: String = "") throws {
            self.init()
            guard let ranges = reply.array else { throw RedisError(.unexpectedReply, "CLUSTER SLOTS answered \(reply)") }
            for range in ranges {
                guard let parts = range.array, parts.count >= 3, let start = parts[0].int, let end = parts[1].int,
                    0 <= start, start <= end, end < RedisClusterSlots.count,
                    let master = parts[2].array, master.count >= 2, let host = master[0].string, let port = master[1].int
                else { throw RedisError(.unexpectedReply, "CLUSTER SLOTS range \(range)") }
                assign(Int(start)...Int(end), to: Node(host: host.isEmpty ? askedHost : host, port: Int(port)))
            }
        }

        mutating func assign(_ slots: ClosedRange<Int>, to node: Node) {
            let index: Int
            if let existing = nodes.firstIndex(of: node) {
                index = existing
            } else {
                index = nodes.count
                nodes.append(node)
            }
            for slot in slots { owners[slot] = Int16(index) }
        }

        /// The master serving `slot`, if the map knows one.
        public func node(for slot: Int) -> Node? {
            let index = owners[slot]
            return index < 0 ? nil : nodes[Int(index)]
        }

        /// The place in ``nodes`` of the master serving `slot`, if the map knows one.
        func nodeIndex(for slot: Int) -> Int? {
            let index = owners[slot]
            return index < 0 ? nil : Int(index)
        }

        /// Whether every slot has a master.
        public var coversEverySlot: Bool { !owners.contains(-1) }
    }
}

extension RedisCommand {
    /// Where this command's keys are among its arguments.
    enum KeyPositions {
        case none
        /// One key, at that argument (the first for most commands): no array to build.
        case one(Int)
        case several([Int])
    }

    /// Where this command's keys sit, as Redis's command table says: the first argument for
    /// most; the one after the subcommand for XGROUP, XINFO, OBJECT, MEMORY; every argument
    /// for MGET, DEL, EXISTS, UNLINK, TOUCH, WATCH; after `numkeys` for
    /// EVAL, EVALSHA, FCALL; after STREAMS, one per id, for XREAD and XREADGROUP; MSET's every
    /// other argument. A command without keys (PING, INFO, CLUSTER, SCRIPT, PUBLISH, ...) has
    /// none: any node may run it.
    var keyPositions: KeyPositions {
        let count = argumentCount
        guard count > 1 else { return .none }
        func positions(_ range: StrideTo<Int>) -> KeyPositions {
            let all = Array(range)
            return all.count == 1 ? .one(all[0]) : all.isEmpty ? .none : .several(all)
        }
        switch name.uppercased() {
        case "PING", "INFO", "CLUSTER", "SCRIPT", "CONFIG", "ROLE", "WAIT", "TIME", "COMMAND", "CLIENT", "ASKING", "READONLY",
            "AUTH", "SELECT", "HELLO", "DBSIZE", "FLUSHALL", "FLUSHDB", "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE",
            "PUNSUBSCRIBE", "MULTI", "EXEC", "DISCARD", "ECHO", "SENTINEL":
            return .none
        case "XGROUP", "XINFO", "OBJECT", "MEMORY":
            // A subcommand first (XINFO GROUPS key, MEMORY USAGE key); without a key after it
            // (XINFO HELP, MEMORY STATS), none.
            return count > 2 ? .one(2) : .none
        case "MGET", "DEL", "EXISTS", "UNLINK", "TOUCH", "WATCH":
            return positions(stride(from: 1, to: count, by: 1))
        case "MSET", "MSETNX":
            return positions(stride(from: 1, to: count, by: 2))
        case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
            guard count >= 3, let keys = Int(String(decoding: argument(2), as: UTF8.self)), keys >= 0, count >= 3 + keys else {
                return .none
            }
            return positions(stride(from: 3, to: 3 + keys, by: 1))
        case "XREAD", "XREADGROUP":
            guard let streams = (1..<count).first(where: { String(decoding: argument($0), as: UTF8.self).uppercased() == "STREAMS" })
            else { return .none }
            let tail = count - streams - 1
            return positions(stride(from: streams + 1, to: streams + 1 + tail / 2, by: 1))
        default:
            return .one(1)
        }
    }

    /// The keys of this command (``keyPositions``).
    public var keys: [[UInt8]] {
        switch keyPositions {
        case .none: []
        case .one(let index): [Array(argument(index))]
        case .several(let indices): indices.map { Array(argument($0)) }
        }
    }

    /// The slot of each key, in order (none for a command without keys).
    var keySlots: [Int] {
        switch keyPositions {
        case .none: []
        case .one(let index): [RedisClusterSlots.slot(of: argument(index))]
        case .several(let indices): indices.map { RedisClusterSlots.slot(of: argument($0)) }
        }
    }

    /// The one slot all of this command's keys hash to; nil when it has no keys. Throws when
    /// its keys span slots (Redis Cluster would answer CROSSSLOT).
    public func slot() throws -> Int? {
        switch keyPositions {
        case .none:
            return nil
        case .one(let index):
            return RedisClusterSlots.slot(of: argument(index))
        case .several(let indices):
            let slots = Set(indices.map { RedisClusterSlots.slot(of: argument($0)) })
            guard slots.count <= 1 else { throw RedisError(.crossSlot, "\(name)'s keys are in \(slots.count) slots") }
            return slots.first
        }
    }
}
