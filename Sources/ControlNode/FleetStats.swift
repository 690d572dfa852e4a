import FleetCore
import Logging
import Metrics
import RedisClient

/// The fleet's figures for `GET /v1/stats` (the admin page, `pushfleet status`): live push
/// nodes with their connections and totals, live control nodes with theirs, and the sums.
/// Each node writes its totals (counted since it started) with its heartbeat, so the figures
/// cost no Redis command per message; a reader turns two readings into rates, per node
/// (`id` and `startedAt` name one run of a node: a restart starts its totals again).
struct FleetStats: Sendable {
    let redis: RedisConnection
    let keys: FleetKeys

    /// A live push node, from its liveness hash (``FleetKeys/node(_:)``).
    struct Node: Encodable {
        var id: String
        var mqtt: String?
        var connections: Int64
        var startedAt: Int64?
        var delivered: Int64
        var acknowledged: Int64

        init(id: String, fields: [String: String]) {
            self.id = id
            mqtt = fields["mqtt"]
            connections = Self.number(fields["connections"])
            startedAt = fields["startedAt"].flatMap { Int64($0) }
            delivered = Self.number(fields["delivered"])
            acknowledged = Self.number(fields["acknowledged"])
        }

        static func number(_ value: String?) -> Int64 { value.flatMap { Int64($0) } ?? 0 }
    }

    /// A live control node, from its liveness hash (``FleetKeys/control(_:)``).
    struct Control: Encodable {
        var id: String
        var startedAt: Int64?
        var pushes: Int64
        var targets: Int64

        init(id: String, fields: [String: String]) {
            self.id = id
            startedAt = fields["startedAt"].flatMap { Int64($0) }
            pushes = Node.number(fields["pushes"])
            targets = Node.number(fields["targets"])
        }
    }

    struct Body: Encodable {
        /// Unix milliseconds of the reading.
        var at: Int64
        var connections: Int64
        /// Messages waiting in terminals' lists (``QueueLedger``: counted by expiry; a
        /// miscount lasts at most until the entries concerned would have expired).
        var queued: Int64
        var pushes: Int64
        var targets: Int64
        var delivered: Int64
        var acknowledged: Int64
        var nodes: [Node]
        var controls: [Control]
    }

    /// The live push nodes: those in the node set whose liveness hash has not expired.
    func pushNodes() async throws -> [Node] {
        let ids = (try await redis.send("SMEMBERS", keys.nodes).throwingError().array ?? []).compactMap(\.string).sorted()
        let replies = try await redis.pipeline(ids.map { RedisCommand("HGETALL", keys.node($0)) })
        return try zip(ids, replies).compactMap { id, reply in
            guard let fields = try Self.hash(reply) else { return nil }
            return Node(id: id, fields: fields)
        }
    }

    /// A liveness hash's fields; nil when it expired (or was never written).
    private static func hash(_ reply: RedisReply) throws -> [String: String]? {
        guard let fields = try reply.throwingError().pairs else { throw RedisError(.unexpectedReply, "expected an array, got \(reply)") }
        return fields.isEmpty ? nil : fields
    }

    func read() async throws -> Body {
        let members = try await redis.pipeline([
            RedisCommand("SMEMBERS", keys.nodes), RedisCommand("SMEMBERS", keys.controls), RedisCommand("HGETALL", keys.queuedLedger),
        ])
        let now = FleetClock.nowMillis()
        let ledger = QueueLedger.queued(in: try members[2].throwingError().pairs ?? [:], nowMillis: now)
        if !ledger.passed.isEmpty { redis.fireAndForget([RedisCommand("HDEL", [keys.queuedLedger] + ledger.passed)]) }
        let nodeIDs = (try members[0].throwingError().array ?? []).compactMap(\.string).sorted()
        let controlIDs = (try members[1].throwingError().array ?? []).compactMap(\.string).sorted()
        let replies = try await redis.pipeline(
            nodeIDs.map { RedisCommand("HGETALL", keys.node($0)) } + controlIDs.map { RedisCommand("HGETALL", keys.control($0)) })
        var nodes: [Node] = []
        var controls: [Control] = []
        var gone: [String] = []
        for (index, reply) in replies.enumerated() {
            let fields = try Self.hash(reply)
            if index < nodeIDs.count {
                if let fields { nodes.append(Node(id: nodeIDs[index], fields: fields)) }
            } else if let fields {
                controls.append(Control(id: controlIDs[index - nodeIDs.count], fields: fields))
            } else {
                gone.append(controlIDs[index - nodeIDs.count])
            }
        }
        // Control nodes whose liveness key expired leave the set (push nodes' are swept by the nodes).
        if !gone.isEmpty { redis.fireAndForget([RedisCommand("SREM", [keys.controls] + gone)]) }
        return Body(
            at: now,
            connections: nodes.reduce(0) { $0 + $1.connections },
            queued: ledger.queued,
            pushes: controls.reduce(0) { $0 + $1.pushes },
            targets: controls.reduce(0) { $0 + $1.targets },
            delivered: nodes.reduce(0) { $0 + $1.delivered },
            acknowledged: nodes.reduce(0) { $0 + $1.acknowledged },
            nodes: nodes,
            controls: controls
        )
    }

    /// Refreshes this control node's liveness hash with its totals every `interval` seconds
    /// (it expires after three), until cancelled.
    /// Its ledger's counts go with it, and the fleet's `queued` figure comes back for the gauge
    /// `pushfleet_queued_messages` (the same on every control node).
    static func heartbeat(
        id: String, metrics: PushMetrics, ledger: QueueLedger, redis: RedisConnection, keys: FleetKeys, logger: Logger, interval: Int = 2
    ) async {
        let started = String(FleetClock.nowMillis())
        let queued = Gauge(label: "pushfleet_queued_messages")
        while !Task.isCancelled {
            let counts = ledger.takeCommands(keys: keys)
            do {
                let replies = try await redis.pipeline(
                    counts.commands + [
                        RedisCommand(
                            "HSET", keys.control(id), "startedAt", started, "pushes", String(metrics.pushes.value), "targets",
                            String(metrics.targets.value)),
                        RedisCommand("EXPIRE", keys.control(id), String(interval * 3)),
                        RedisCommand("SADD", keys.controls, id),
                        RedisCommand("HGETALL", keys.queuedLedger),
                    ])
                if replies.prefix(counts.commands.count).contains(where: \.isError) { ledger.restore(counts.taken) }
                if let fields = replies.last?.pairs {
                    queued.record(QueueLedger.queued(in: fields, nowMillis: FleetClock.nowMillis()).queued)
                }
            } catch {
                ledger.restore(counts.taken)
                logger.debug("heartbeat failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(interval))
        }
    }
}
