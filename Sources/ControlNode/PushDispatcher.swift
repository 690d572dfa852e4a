import FleetCore
import FleetRedis
import Logging
import Metrics
import NIOConcurrencyHelpers
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
        let kind: String
        switch command.audience {
        case .terminals(let terminals):
            kind = "unicast"
            receipt = try await pushToTerminals(
                Array(Set(terminals)).sorted(), command: command, id: id, earlierExpiresAt: earlierExpiresAt, wakes: wakes)
        case .topic(let topic):
            kind = "topic"
            receipt = try await publishToTopic(command, topic: topic, id: id)
        case .broadcast:
            kind = "broadcast"
            receipt = try await publishLive(command, topic: "broadcast", id: id, kind: kind)
        }
        Counter(label: "pushfleet_control_pushes_total", dimensions: [("kind", kind)]).increment()
        Counter(label: "pushfleet_control_push_targets_total").increment(by: receipt.targets)
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
    }

    /// A topic push's or broadcast's status record, and its bucket's expiry.
    private func statusCommands(id: String, command: PushCommand, kind: String) -> [RedisCommand] {
        // A broadcast reaches the terminals online at that moment: nothing waits, whatever its ttl.
        let ttl = kind == "broadcast" ? 0 : command.ttl
        let record = MessageStatusRecord(kind: kind, qos: Int(command.qos), ttl: ttl, createdAt: FleetClock.nowMillis(), expiresAt: 0)
        var writes = StatusWrites()
        writes.set(MessageStatusField.record(id), record.encoded, of: id)
        return statusCommands(writes)
    }

    /// The commands that store one push (ttl > 0) and read its targets' routes: per target
    /// its entry appended, the list's expiry set or extended, and its route read, in plain
    /// commands (Lua costs Redis several times more per call on this path); a retry appends
    /// with ``FleetScripts/store``, which skips entries already there. ``storedPipeline(_:)``
    /// puts the status around them.
    struct StoredPushPlan {
        var terminals: [String]
        var id: String
        /// terminal -> its stored entry, for wake events (empty for a
        /// retry: its entries may be in the lists already, and the nodes then read the lists).
        var entries: [String: String]
        /// The store commands (``plainStoreCommands`` per target, or one script per target for
        /// a retry).
        var commands: [RedisCommand]
        /// A retry: one ``FleetScripts/store`` per target.
        var retry: Bool
        /// The status record to create (nil for a retry: the earlier attempt created it).
        var record: MessageStatusRecord?
    }

    /// Commands per target of a new push: RPUSH, PEXPIRE NX, PEXPIRE GT (the routes are read
    /// for the whole pipeline with one MGET, ``storedPipeline(_:)``).
    static let plainStoreCommands = 3

    /// - Parameter earlierExpiresAt: set when an earlier attempt of this message created its
    ///   status: the entries are rebuilt byte for byte (same expiry) and appended only where
    ///   they are missing.
    func planStored(_ terminals: [String], command: PushCommand, id: String, earlierExpiresAt: Int64?) -> StoredPushPlan {
        let retry = earlierExpiresAt != nil
        let now = FleetClock.nowMillis()
        let expiresAt = earlierExpiresAt ?? now + Int64(command.ttl) * 1000
        var entries: [String: String] = [:]
        let ttlMillis = String(Int64(command.ttl) * 1000)
        var commands: [RedisCommand] = []
        commands.reserveCapacity(terminals.count * Self.plainStoreCommands)
        for terminal in terminals {
            let entry = StoredMessage(id: id, qos: command.qos, expiresAt: expiresAt, topic: "push/\(terminal)", payload: command.payload)
                .encoded()
            let queue = keys.queue(terminal)
            if retry {
                commands.append(
                    FleetScripts.store.command(
                        keys: [queue, keys.route(terminal)], arguments: [entry, String(configuration.offlineQueueCap), ttlMillis, "1"]))
                continue
            }
            entries[terminal] = entry
            commands.append(RedisCommand("RPUSH", queue, entry))
            // The list lives as long as its longest-lived entry: a list this push created gets
            // the entry's lifetime, one that was there already is extended if the entry outlives
            // it. Both here, right after the append: extended later (only for lists that were
            // there, which would save a command for new ones), a list whose expiry came in
            // between would take the new entry with it, and then nothing tells that loss from
            // a delivery that removed the entry.
            commands.append(RedisCommand("PEXPIRE", queue, ttlMillis, "NX"))
            commands.append(RedisCommand("PEXPIRE", queue, ttlMillis, "GT"))
        }
        let record =
            retry
            ? nil
            : MessageStatusRecord(kind: "unicast", qos: Int(command.qos), ttl: command.ttl, createdAt: now, expiresAt: expiresAt, targets: terminals)
        return StoredPushPlan(
            terminals: terminals, id: id, entries: entries, commands: commands, retry: retry, record: record)
    }

    /// One pipeline storing `plans`, and where each plan's replies are in it.
    struct StoredPipeline {
        var commands: [RedisCommand]
        /// Where each plan's store commands start.
        var starts: [Int]
        /// The MGET of the new plans' routes (nil when every plan is a retry, whose script
        /// reads the route itself).
        var routes: Int?
        /// Where each plan's terminals start in the MGET.
        var routeStarts: [Int]
    }

    /// One pipeline storing `plans`: their status records first (one HSET per status bucket,
    /// so a retry finds an earlier attempt's expiry and rebuilds its entries byte for byte),
    /// then every plan's store commands, then one MGET of every target's route (after the
    /// stores: a terminal that connects in between finds its entry when it registers, else its
    /// route is read here), then `complete` for them all: Redis runs a connection's commands
    /// in order, so a status found complete had all its entries stored.
    func storedPipeline(_ plans: [StoredPushPlan]) -> StoredPipeline {
        var records = StatusWrites()
        var complete = StatusWrites()
        for plan in plans {
            if let record = plan.record { records.set(MessageStatusField.record(plan.id), record.encoded, of: plan.id) }
            complete.set(MessageStatusField.complete(plan.id), "1", of: plan.id)
        }
        var commands = statusCommands(records)
        var starts: [Int] = []
        starts.reserveCapacity(plans.count)
        var routeKeys: [String] = []
        var routeStarts: [Int] = []
        routeStarts.reserveCapacity(plans.count)
        for plan in plans {
            starts.append(commands.count)
            commands += plan.commands
            routeStarts.append(routeKeys.count)
            if !plan.retry { routeKeys += plan.terminals.map(keys.route) }
        }
        var routes: Int?
        if !routeKeys.isEmpty {
            routes = commands.count
            commands.append(RedisCommand("MGET", routeKeys))
        }
        commands += complete.commands(keys: keys)
        return StoredPipeline(commands: commands, starts: starts, routes: routes, routeStarts: routeStarts)
    }

    /// Commands sent once stored pushes' first pipeline answered.
    struct FollowUp {
        var commands: [RedisCommand] = []
        /// Where in `commands` a list the push made longer than the cap is trimmed, and whose.
        var trims: [(index: Int, terminal: String)] = []
        /// States to record (targets whose entries a cap pushed out).
        var states = StatusWrites()
    }

    /// What follows a stored push's first pipeline (`replies`: its store commands' replies;
    /// `routes`: its targets' routes, from the MGET): lists over the cap are trimmed (their
    /// oldest entries then count as `dropped`), and its targets' nodes are added to `wakes`.
    func followUp(
        _ plan: StoredPushPlan, replies: ArraySlice<RedisReply>, routes: ArraySlice<RedisReply>, wakes: WakeBatch,
        into followUp: inout FollowUp
    ) {
        var byNode: [String: [String]] = [:]
        let cap = Int64(configuration.offlineQueueCap)
        let now = FleetClock.nowMillis()
        for (offset, terminal) in plan.terminals.enumerated() {
            let node: String?
            if plan.retry {
                // The route's node, then what the cap pushed out.
                let reply = replies[replies.startIndex + offset].array ?? []
                node = reply.first?.string
                for dropped in reply.dropFirst().compactMap({ $0.string.flatMap(StoredMessage.decode) }) {
                    followUp.states.record(.dropped, of: dropped.id, terminal: terminal, at: now)
                }
            } else {
                let base = replies.startIndex + offset * Self.plainStoreCommands
                node = routes.dropFirst(offset).first?.string.flatMap(Route.node(in:))
                if let length = replies[base].int, length > cap {
                    followUp.trims.append((followUp.commands.count, terminal))
                    followUp.commands.append(FleetScripts.trim.command(keys: [keys.queue(terminal)], arguments: [String(cap)]))
                }
            }
            if let node, !node.isEmpty { byNode[node, default: []].append(terminal) }
        }
        wakes.add(byNode, entries: plan.entries)
    }

    /// Sends a follow-up, then records `dropped` for the entries its trims pushed out.
    func send(_ followUp: FollowUp) async throws {
        let commands = followUp.commands + statusCommands(followUp.states)
        guard !commands.isEmpty else { return }
        let replies = try await redis.pipeline(commands)
        if let failure = replies.first(where: \.isError) {
            logger.warning("push follow-up failed", metadata: ["error": "\(failure)"])
        }
        var dropped = StatusWrites()
        let now = FleetClock.nowMillis()
        for (index, terminal) in followUp.trims {
            for entry in replies[index].array ?? [] {
                guard let message = entry.string.flatMap(StoredMessage.decode) else { continue }
                dropped.record(.dropped, of: message.id, terminal: terminal, at: now)
            }
        }
        if !dropped.isEmpty { _ = try await redis.pipeline(statusCommands(dropped)) }
    }

    private func pushToTerminals(
        _ terminals: [String], command: PushCommand, id: String, earlierExpiresAt: Int64?, wakes: WakeBatch?
    ) async throws -> PushReceipt {
        guard command.ttl > 0 else {
            return try await pushOnline(terminals, command: command, id: id, earlierAttempt: earlierExpiresAt != nil)
        }
        let plan = planStored(terminals, command: command, id: id, earlierExpiresAt: earlierExpiresAt)
        let pipeline = storedPipeline([plan])
        let replies = try await redis.pipeline(pipeline.commands)
        if let failure = replies.first(where: \.isError) {
            await takeBackComplete([plan.id])
            throw RedisError(.server, failure.description)
        }
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

    /// The routes the pipeline's MGET read (empty when it had none).
    static func routes(_ pipeline: StoredPipeline, _ replies: [RedisReply]) -> [RedisReply] {
        pipeline.routes.flatMap { replies[$0].array } ?? []
    }

    /// A push that failed part way had its status written complete in the same pipeline:
    /// that is taken back, so a retry finishes it rather than taking it for done.
    private func takeBackComplete(_ ids: [String]) async {
        guard !ids.isEmpty else { return }
        var byBucket: [StatusBucket: [String]] = [:]
        for id in ids { byBucket[StatusBucket(messageID: id), default: []].append(MessageStatusField.complete(id)) }
        do {
            _ = try await redis.pipeline(byBucket.map { RedisCommand("HDEL", [keys.statusBucket($0.key)] + $0.value) })
        } catch {
            logger.warning("a failed push's status could not be taken back", metadata: ["messages": "\(ids)", "error": "\(error)"])
        }
    }

    /// An online-only push (ttl 0): nothing is stored; each node holding targets gets the
    /// message once, the others' targets count as dropped.
    private func pushOnline(_ terminals: [String], command: PushCommand, id: String, earlierAttempt: Bool) async throws -> PushReceipt {
        var record = StatusWrites()
        if !earlierAttempt {
            let status = MessageStatusRecord(
                kind: "unicast", qos: Int(command.qos), ttl: 0, createdAt: FleetClock.nowMillis(), expiresAt: 0, targets: terminals)
            record.set(MessageStatusField.record(id), status.encoded, of: id)
        }
        var commands = statusCommands(record)
        commands.append(RedisCommand("MGET", terminals.map(keys.route)))
        let replies = try await redis.pipeline(commands)
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        var followUp: [RedisCommand] = []
        // Online-only events: index in `followUp` and the terminals they address.
        var liveEvents: [(Int, [String])] = []
        var byNode: [String: [String]] = [:]
        var offline: [String] = []
        let routes = replies.last?.array ?? []
        for (offset, terminal) in terminals.enumerated() {
            if let node = routes.dropFirst(offset).first?.string.flatMap(Route.node(in:)) {
                byNode[node, default: []].append(terminal)
            } else {
                offline.append(terminal)
            }
        }
        let message = StoredMessage(id: id, qos: command.qos, expiresAt: 0, topic: "", payload: command.payload)
        let nodes = Array(byNode.keys)
        let alive = try await redis.pipeline(nodes.map { RedisCommand("EXISTS", keys.node($0)) })
        for (node, reply) in zip(nodes, alive) {
            let held = byNode[node]!
            guard reply.int == 1 else {
                offline += held
                continue
            }
            // One event per node; each terminal gets the message on its own topic.
            liveEvents.append((followUp.count, held))
            followUp.append(
                RedisCommand("SPUBLISH", keys.nodeChannel(node), NodeEvent(kind: .deliver, terminals: held, message: message).encoded())
            )
        }
        let now = FleetClock.nowMillis()
        var states = StatusWrites()
        for terminal in offline { states.record(.dropped, of: id, terminal: terminal, at: now) }
        states.set(MessageStatusField.complete(id), "1", of: id)
        // Nothing is stored: if the nodes cannot be told, the push fails.
        let results = try await redis.pipeline(followUp + states.commands(keys: keys))
        if let failure = results.first(where: \.isError) {
            logger.warning("push follow-up failed", metadata: ["message": "\(id)", "error": "\(failure)"])
        }
        // An online-only event no node received is dropped for its terminals.
        var unheard = StatusWrites()
        for (index, held) in liveEvents where results[index].int == 0 {
            for terminal in held { unheard.record(.dropped, of: id, terminal: terminal, at: now) }
        }
        if !unheard.isEmpty { _ = try await redis.pipeline(unheard.commands(keys: keys)) }
        return PushReceipt(id: id, targets: terminals.count)
    }

    /// A topic push goes where a terminal's publish on that topic would: to the nodes with
    /// matching subscriptions and, with ttl > 0 and QoS > 0, into the lists of absent
    /// persistent sessions subscribed to it (expiring with the ttl). Its status counts no
    /// targets: the subscribers are not known in advance.
    private func publishToTopic(_ command: PushCommand, topic: String, id: String) async throws -> PushReceipt {
        let expiresAt = command.ttl > 0 ? FleetClock.nowMillis() + Int64(command.ttl) * 1000 : 0
        let message = StoredMessage(id: id, qos: command.qos, expiresAt: expiresAt, topic: topic, payload: command.payload)
        let replies = try await redis.pipeline(statusCommands(id: id, command: command, kind: "topic"))
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        let outcome = try await router.route(message, storeForAbsent: command.ttl > 0 && command.qos > 0).get()
        var done = StatusWrites()
        done.set(MessageStatusField.complete(id), "1", of: id)
        done.set(MessageStatusField.nodes(id), String(outcome.nodes), of: id)
        done.set(MessageStatusField.storedForSessions(id), String(outcome.stored), of: id)
        _ = try await redis.pipeline(done.commands(keys: keys))
        return PushReceipt(id: id, targets: 0)
    }

    private func publishLive(_ command: PushCommand, topic: String, id: String, kind: String) async throws -> PushReceipt {
        let message = StoredMessage(id: id, qos: command.qos, expiresAt: 0, topic: topic, payload: command.payload)
        var commands = statusCommands(id: id, command: command, kind: kind)
        commands.append(RedisCommand("PUBLISH", keys.broadcastChannel, NodeEvent(kind: .deliver, message: message).encoded()))
        let replies = try await redis.pipeline(commands)
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        // Every node that heard it counts the terminals it wrote it to into its reach.
        let nodes = replies.last?.int ?? 0
        var done = StatusWrites()
        done.set(MessageStatusField.complete(id), "1", of: id)
        done.set(MessageStatusField.nodes(id), String(nodes), of: id)
        _ = try await redis.pipeline(done.commands(keys: keys))
        return PushReceipt(id: id, targets: 0)
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
                let plan = planStored(
                    Array(Set(terminals)).sorted(), command: command, id: ids?[index] ?? newIDs[index], earlierExpiresAt: nil)
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
                        failed.append(plan.id)
                        continue
                    }
                    followUp(plan, replies: slice, routes: routes.dropFirst(pipeline.routeStarts[offset]), wakes: wakes, into: &followUps)
                    results[index] = .success(PushReceipt(id: plan.id, targets: plan.terminals.count))
                    Counter(label: "pushfleet_control_pushes_total", dimensions: [("kind", "unicast")]).increment()
                    Counter(label: "pushfleet_control_push_targets_total").increment(by: plan.terminals.count)
                }
                await takeBackComplete(failed)
                do {
                    try await send(followUps)
                } catch {
                    // Stored is accepted: lists keep the expiry they had, nodes hear of the
                    // messages at their terminals' next wake or connect.
                    logger.warning("batch stored, follow-up failed", metadata: ["error": "\(error)"])
                }
            } catch {
                await takeBackComplete(plans.map(\.plan.id))
                for (index, _) in plans { results[index] = .failure(error) }
            }
        }
        // The rest one after the other (topic pushes, retries with an idempotency key, online
        // only pushes): each has its own round trips.
        for index in others {
            do {
                results[index] = .success(try await push(commands[index], id: ids?[index], fresh: ids != nil, wakes: wakes))
            } catch {
                results[index] = .failure(error)
            }
        }
        return results.map { $0 ?? .failure(RedisError(.unavailable, "push not attempted")) }
    }

    /// Sends the wake events a batch collected: one per node. A failure is only logged: the
    /// messages are stored, and their terminals find them on the next wake or connect.
    public func sendWakes(_ wakes: WakeBatch) async {
        let byNode = wakes.take()
        guard !byNode.isEmpty else { return }
        let commands = byNode.map { node, wake in
            let event = NodeEvent(kind: .wake, terminals: wake.terminals, entries: wake.complete ? wake.entries : nil)
            return RedisCommand("SPUBLISH", keys.nodeChannel(node), event.encoded())
        }
        do {
            _ = try await redis.pipeline(commands)
        } catch {
            logger.warning("pushes stored but nodes not notified", metadata: ["nodes": "\(byNode.count)", "error": "\(error)"])
        }
    }
}

/// The wake events of many pushes, gathered so each node gets one event per batch.
public final class WakeBatch: Sendable {
    struct Wake: Sendable {
        var terminals: [String] = []
        var entries: [String] = []
        /// Every terminal came with its entry (else the event names terminals only).
        var complete = true
    }

    private let byNode = NIOLockedValueBox([String: Wake]())

    public init() {}

    /// Adds one push's terminals per node, with their new entries where known.
    func add(_ terminals: [String: [String]], entries: [String: String]) {
        byNode.withLockedValue { byNode in
            for (node, held) in terminals {
                var wake = byNode[node] ?? Wake()
                for terminal in held {
                    wake.terminals.append(terminal)
                    if let entry = entries[terminal] {
                        wake.entries.append(entry)
                    } else {
                        wake.complete = false
                    }
                }
                byNode[node] = wake
            }
        }
    }

    func take() -> [String: Wake] {
        byNode.withLockedValue { byNode in
            defer { byNode = [:] }
            return byNode
        }
    }
}
