import FleetCore
import FleetRedis
import Logging
import Metrics
import RedisClient

/// Accepts pushes: stores them, records their status and notifies the push nodes.
///
/// For terminals and ttl > 0 the message is in every target's Redis list before `push`
/// returns (invariant 1); the routes are read after storing, in the same pipeline, and each
/// node holding targets gets one `wake` event per push (invariant 2). A node that is dead or
/// missed the event does no harm: the terminal finds the message on its next connect.
public struct PushDispatcher: Sendable {
    let configuration: ControlNodeConfiguration
    let redis: RedisConnection
    let logger: Logger
    /// Routes topic pushes through the fleet index, like a terminal's publish.
    let router: TopicRouter
    /// Gives the status buckets this node writes their expiry.
    let statusExpiry: StatusBucketExpiry
    let metrics = PushMetrics()
    /// Entries this node put into lists and saw pushed out, for the fleet's `queued` figure.
    let ledger = QueueLedger()

    var keys: FleetKeys { configuration.keys }

    /// - Parameter index: the control node's copy of the fleet index (kept current by
    ///   ``ControlNode``); topic pushes reach the subscribers it knows.
    public init(
        configuration: ControlNodeConfiguration, redis: RedisConnection, logger: Logger, index: SubscriptionIndex = SubscriptionIndex()
    ) {
        self.configuration = configuration
        self.redis = redis
        self.logger = logger
        self.router = TopicRouter(
            redis: redis, keys: configuration.keys, index: index, queueCap: configuration.offlineQueueCap,
            storedLifetime: configuration.maximumStoredLifetime)
        self.statusExpiry = StatusBucketExpiry(.retention(Int64(configuration.statusRetention)))
    }

    /// Accepts `command` under `id` (a new id when nil). Throws ``RedisError`` when storage
    /// fails: then nothing was accepted.
    /// - Parameters:
    ///   - fresh: `id` was never tried before (a command stream entry read for the first
    ///     time), so there is no earlier attempt to look for.
    ///   - wakes: collects the `wake` events of many pushes (a batch), to be sent as one
    ///     event per node by ``sendWakes(_:)``; nil sends this push's own at once.
    public func push(_ command: PushCommand, id givenID: String? = nil, fresh: Bool = false, wakes: WakeBatch? = nil) async throws
        -> PushReceipt
    {
        let receipt = try await accept(command, id: givenID, fresh: fresh, wakes: wakes)
        guard try await replicated() else { throw notReplicated(receipt.id) }
        return receipt
    }

    /// ``push(_:id:fresh:wakes:)`` up to the master's answer.
    private func accept(_ command: PushCommand, id givenID: String?, fresh: Bool, wakes: WakeBatch?) async throws -> PushReceipt {
        var id = givenID ?? FleetClock.newMessageID()
        // Only a given id (a stream entry claimed or read again) or an idempotency key seen
        // before can have an earlier attempt; a new id costs no extra round trip.
        var mayHaveEarlierAttempt = givenID != nil && !fresh
        if let key = command.idempotencyKey {
            let idemKey = keys.idempotency(key)
            let claimed = try await redis.send("SET", idemKey, id, "NX", "EX", String(configuration.statusRetention))
            if claimed.isNull, let existing = try await redis.send("GET", idemKey).string {
                // Another call with this key is running or failed part way. Give a running one
                // time to finish; then finish it ourselves under its id.
                for attempt in 0..<20 {
                    let earlier = try await earlierAttempt(existing)
                    if earlier.complete { return PushReceipt(id: existing, targets: earlier.record?.targets.count ?? 0) }
                    if attempt < 19 { try await Task.sleep(for: .milliseconds(100)) }
                }
                id = existing
                mayHaveEarlierAttempt = true
            }
        }
        // A status record with `complete` is a finished push: answer with it. One without is an
        // earlier attempt that failed part way: finish it under its id, never start a second one.
        var earlierExpiresAt: Int64?
        if mayHaveEarlierAttempt {
            let earlier = try await earlierAttempt(id)
            if earlier.complete { return PushReceipt(id: id, targets: earlier.record?.targets.count ?? 0) }
            earlierExpiresAt = earlier.record?.expiresAt
        }
        let receipt: PushReceipt
        let kind: PushMetrics.Kind
        switch command.audience {
        case .terminals(let terminals):
            kind = .unicast
            receipt = try await pushToTerminals(
                Array(Set(terminals)).sorted(), command: command, id: id, earlierExpiresAt: earlierExpiresAt,
                retryable: givenID != nil || command.idempotencyKey != nil, wakes: wakes)
        case .topic(let topic):
            kind = .topic
            receipt = try await publishToTopic(command, topic: topic, id: id)
        case .broadcast:
            kind = .broadcast
            receipt = try await publishLive(command, topic: "broadcast", id: id, kind: kind.rawValue)
        }
        metrics.accepted(kind, qos: command.qos, targets: receipt.targets)
        return receipt
    }

    /// What an earlier attempt of message `id` left in its status: its record, and whether
    /// it finished.
    func earlierAttempt(_ id: String) async throws -> (record: MessageStatusRecord?, complete: Bool) {
        let reply = try await redis.send(
            RedisCommand(
                "HMGET", keys.statusBucket(StatusBucket(messageID: id)), MessageStatusField.record(id), MessageStatusField.complete(id)))
        let values = try reply.throwingError().array ?? []
        return (values.first?.string.flatMap(MessageStatusRecord.init(decoding:)), values.last?.string == "1")
    }

    /// Writes `writes` into their buckets, and the buckets' expiry where this node has not
    /// set it lately.
    func statusCommands(_ writes: StatusWrites) -> [RedisCommand] {
        writes.commands(keys: keys) + statusExpiry.commands(for: writes.fields.keys, keys: keys)
            + writes.eventCommands(keys: keys, length: configuration.statusEvents)
    }

    private func pushToTerminals(
        _ terminals: [String], command: PushCommand, id: String, earlierExpiresAt: Int64?, retryable: Bool, wakes: WakeBatch?
    ) async throws -> PushReceipt {
        guard command.ttl > 0 else {
            return try await pushOnline(terminals, command: command, id: id, earlierAttempt: earlierExpiresAt != nil)
        }
        let plan = planStored(terminals, command: command, id: id, earlierExpiresAt: earlierExpiresAt, retryable: retryable)
        let pipeline = storedPipeline([plan])
        let replies = try await redis.pipeline(pipeline.commands)
        if let failure = replies.first(where: \.isError) {
            if plan.retryable { await takeBackComplete([plan.id]) }
            throw RedisError(.server, failure.description)
        }
        try await markComplete([plan])
        let batch = wakes ?? WakeBatch()
        var followUp = FollowUp()
        let start = pipeline.starts[0]
        self.followUp(
            plan, replies: replies[start..<start + plan.commands.count], routes: Self.routes(pipeline, replies)[...], wakes: batch,
            into: &followUp)
        do {
            try await send(followUp)
        } catch {
            // Stored is accepted: the wake is only a hint, the terminals find the message on
            // their next wake or connect.
            logger.warning("push stored but nodes not notified", metadata: ["message": "\(id)", "error": "\(error)"])
            return PushReceipt(id: id, targets: terminals.count)
        }
        if wakes == nil { await sendWakes(batch) }
        return PushReceipt(id: id, targets: terminals.count)
    }

    /// Accepts many pushes at once (the batch endpoint, and a read of the command stream).
    /// Stored pushes to terminals (ttl > 0, no idempotency key) share one pipeline for storing
    /// and one for what follows; the others go through ``push(_:id:wakes:)`` one after the
    /// other. Each push is accepted or fails on its own; `wakes` collects the nodes to notify.
    /// - Parameter ids: the pushes' message ids (command stream entries read for the first
    ///   time: no earlier attempt can exist); nil gives each a new one.
    public func pushMany(_ commands: [PushCommand], ids: [String]? = nil, wakes: WakeBatch) async -> [Result<PushReceipt, any Error>] {
        var results = [Result<PushReceipt, any Error>?](repeating: nil, count: commands.count)
        var plans: [(index: Int, plan: StoredPushPlan)] = []
        var others: [Int] = []
        // One status shard for the batch: its records go in one HSET per second.
        let newIDs = ids == nil ? FleetClock.newMessageIDs(commands.count) : []
        for (index, command) in commands.enumerated() {
            if case .terminals(let terminals) = command.audience, command.ttl > 0, command.idempotencyKey == nil {
                // Stream entries' ids can be attempted again (claimed from a control node that
                // died before XACK); the API's new ids cannot.
                let plan = planStored(
                    Array(Set(terminals)).sorted(), command: command, id: ids?[index] ?? newIDs[index], earlierExpiresAt: nil,
                    retryable: ids != nil)
                plans.append((index, plan))
            } else {
                others.append(index)
            }
        }
        if !plans.isEmpty {
            do {
                let pipeline = storedPipeline(plans.map(\.plan))
                let replies = try await redis.pipeline(pipeline.commands)
                if let failure = replies[..<pipeline.starts[0]].first(where: \.isError) {
                    throw RedisError(.server, failure.description)
                }
                let routes = Self.routes(pipeline, replies)
                var followUps = FollowUp()
                var failed: [String] = []
                for (offset, (index, plan)) in plans.enumerated() {
                    let start = pipeline.starts[offset]
                    let slice = replies[start..<start + plan.commands.count]
                    if let failure = slice.first(where: \.isError) {
                        results[index] = .failure(RedisError(.server, failure.description))
                        if plan.retryable { failed.append(plan.id) }
                        continue
                    }
                    followUp(plan, replies: slice, routes: routes.dropFirst(pipeline.routeStarts[offset]), wakes: wakes, into: &followUps)
                    results[index] = .success(PushReceipt(id: plan.id, targets: plan.terminals.count))
                    metrics.accepted(.unicast, qos: plan.qos, targets: plan.terminals.count)
                }
                await takeBackComplete(failed)
                let stored = plans.filter { if case .success? = results[$0.index] { true } else { false } }
                do {
                    try await markComplete(stored.map(\.plan))
                } catch {
                    for (index, plan) in stored where plan.retryable { results[index] = .failure(error) }
                }
                do {
                    try await send(followUps)
                } catch {
                    // Stored is accepted: lists keep the expiry they had, nodes hear of the
                    // messages at their terminals' next wake or connect.
                    logger.warning("batch stored, follow-up failed", metadata: ["error": "\(error)"])
                }
            } catch {
                await takeBackComplete(plans.filter(\.plan.retryable).map(\.plan.id))
                for (index, _) in plans { results[index] = .failure(error) }
            }
        }
        // The rest one after the other (topic pushes, retries with an idempotency key, online
        // only pushes): each has its own round trips.
        for index in others {
            do {
                results[index] = .success(try await accept(commands[index], id: ids?[index], fresh: ids != nil, wakes: wakes))
            } catch {
                results[index] = .failure(error)
            }
        }
        // One wait for a replica covers the whole batch.
        if results.contains(where: { if case .success? = $0 { true } else { false } }) {
            let confirmed: Result<Bool, any Error>
            do { confirmed = .success(try await replicated()) } catch { confirmed = .failure(error) }
            for index in results.indices {
                guard case .success(let receipt)? = results[index] else { continue }
                switch confirmed {
                case .success(true): break
                case .success(false): results[index] = .failure(notReplicated(receipt.id))
                case .failure(let error): results[index] = .failure(error)
                }
            }
        }
        return results.map { $0 ?? .failure(RedisError(.unavailable, "push not attempted")) }
    }

    /// Under ``Durability/replica``: waits until a replica has every write this node's Redis
    /// connection made so far (`WAIT 1`, which covers the pushes just stored: one connection's
    /// commands run in order). False when none confirms in time; always true under
    /// ``Durability/master``.
    func replicated() async throws -> Bool {
        guard configuration.durability == .replica else { return true }
        return try await redis.send("WAIT", "1", String(configuration.replicaTimeout)).int ?? 0 >= 1
    }

    func notReplicated(_ id: String) -> NotReplicated {
        NotReplicated(timeoutMillis: configuration.replicaTimeout, messageID: id)
    }

    /// Sends the wake events a batch collected: one per node. A failure is only logged: the
    /// messages are stored, and their terminals find them on the next wake or connect.
    public func sendWakes(_ wakes: WakeBatch) async {
        let byNode = wakes.take()
        guard !byNode.isEmpty else { return }
        let commands = byNode.map { node, wake in
            var event = NodeEvent(kind: .wake, terminals: wake.terminals, entries: wake.complete ? wake.entries : nil)
            // Stored entries are JSON: carried verbatim, not escaped into strings.
            event.entriesAreJSON = true
            return RedisCommand("SPUBLISH", keys.nodeChannel(node), event.encoded())
        }
        do {
            _ = try await redis.pipeline(commands)
        } catch {
            logger.warning("pushes stored but nodes not notified", metadata: ["nodes": "\(byNode.count)", "error": "\(error)"])
        }
    }
}

/// The control node's push counters, made once: a swift-metrics handle made per push costs a
/// registry lookup under a lock (5% of the control node's CPU in the batch benchmark).
struct PushMetrics: Sendable {
    enum Kind: String, Sendable {
        case unicast, topic, broadcast
    }

    /// By kind and QoS: `kinds[kind][qos]`.
    private let kinds: [Kind: [Counter]] = Dictionary(
        uniqueKeysWithValues: [Kind.unicast, .topic, .broadcast].map { kind in
            (
                kind,
                (0...2).map { Counter(label: "pushfleet_control_pushes_total", dimensions: [("kind", kind.rawValue), ("qos", "\($0)")]) }
            )
        })
    let targets = Tally(label: "pushfleet_control_push_targets_total")
    /// Entries put into terminals' lists (a unicast push's targets, a topic push's absent
    /// persistent sessions).
    let stored = Counter(label: "pushfleet_control_stored_total")
    /// Every kind's pushes, for this node's heartbeat (the fleet's figures).
    let pushes = Tally()

    func accepted(_ kind: Kind, qos: UInt8, targets count: Int) {
        kinds[kind]?[Int(min(qos, 2))].increment()
        pushes.increment()
        targets.increment(by: count)
    }
}

/// A push the Redis master stored but no replica confirmed within the timeout
/// (``Durability/replica``): not accepted. The API answers 503; a retry with the same
/// idempotency key (or the same stream entry) does not store it twice.
public struct NotReplicated: Error, CustomStringConvertible, Sendable {
    public var timeoutMillis: Int
    /// The message the master stored (its status can be read under this id).
    public var messageID: String
    public var description: String {
        "message \(messageID) is stored on the Redis master, but no replica confirmed it within \(timeoutMillis) ms"
    }
}
