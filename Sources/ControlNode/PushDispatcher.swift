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
    }

    /// Accepts `command` under `id` (a new id when nil). Throws ``RedisError`` when storage
    /// fails: then nothing was accepted.
    /// - Parameter wakes: collects the `wake` events of many pushes (a batch), to be sent as one
    ///   event per node by ``sendWakes(_:)``; nil sends this push's own at once.
    public func push(_ command: PushCommand, id givenID: String? = nil, wakes: WakeBatch? = nil) async throws -> PushReceipt {
        var id = givenID ?? FleetClock.newMessageID()
        // Only a given id (a stream entry) or an idempotency key seen before can have an
        // earlier attempt; a fresh id costs no extra round trip.
        var mayHaveEarlierAttempt = givenID != nil
        if let key = command.idempotencyKey {
            let idemKey = keys.idempotency(key)
            let claimed = try await redis.send("SET", idemKey, id, "NX", "EX", String(configuration.statusRetention))
            if claimed.isNull, let existing = try await redis.send("GET", idemKey).string {
                // Another call with this key is running or failed part way. Give a running one
                // time to finish; then finish it ourselves under its id.
                for attempt in 0..<20 {
                    let status = try await redis.send("HMGET", keys.messageStatus(existing), "complete", "targets").array ?? []
                    if status.first?.string == "1" {
                        return PushReceipt(id: existing, targets: Int(status.last?.int ?? 0))
                    }
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
            let status = try await redis.send("HMGET", keys.messageStatus(id), "complete", "targets", "expiresAt").array ?? []
            if status.first?.string == "1" { return PushReceipt(id: id, targets: Int(status[1].int ?? 0)) }
            earlierExpiresAt = status.count == 3 ? status[2].int : nil
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

    /// A topic push's or broadcast's status hash with its counts at zero, and its expiry.
    private func statusCommands(id: String, command: PushCommand, kind: String, targets: Int) -> [RedisCommand] {
        let key = keys.messageStatus(id)
        // A broadcast reaches the terminals online at that moment: nothing waits, whatever its ttl.
        let ttl = kind == "broadcast" ? 0 : command.ttl
        typealias Field = MessageStatusField
        var fields = [
            key, Field.createdAt, String(FleetClock.nowMillis()), Field.kind, kind, Field.qos, String(command.qos), Field.ttl, String(ttl),
            Field.targets, String(targets),
        ]
        for state in MessageState.allCases { fields += [Field.count(state), "0"] }
        return [RedisCommand("HSET", fields), RedisCommand("EXPIRE", key, String(configuration.statusRetention))]
    }

    /// The commands that store one push (ttl > 0) and read its targets' routes: the status
    /// (unless a retry finds it), then per target its entry appended, the list's expiry
    /// extended and its route read, in plain commands (Lua costs Redis several times more per
    /// call on this path); a retry appends with ``FleetScripts/store``, which skips entries
    /// already there.
    struct StoredPushPlan {
        var terminals: [String]
        var id: String
        /// terminal -> its stored entry, for wake events (empty for a retry: its entries may be
        /// in the lists already, and the nodes then read the lists).
        var entries: [String: String]
        var commands: [RedisCommand]
        var storeStart: Int
        /// A retry: one ``FleetScripts/store`` per target (else ``plainStoreCommands`` commands).
        var retry: Bool
        /// The status is created complete: nothing is left to mark once the entries are stored.
        var completeWhenStored: Bool
    }

    /// Commands per target of a new push: RPUSH, PEXPIRE NX, PEXPIRE GT, HGET route.
    static let plainStoreCommands = 4

    /// - Parameters:
    ///   - earlierExpiresAt: set when an earlier attempt of this message created its status:
    ///     the status is kept, the entries are rebuilt byte for byte (same expiry) and appended
    ///     only where they are missing.
    ///   - completeWhenStored: the status is created complete, saving a command per push. Only
    ///     for a push nothing retries under the same id (a fresh id without idempotency key):
    ///     `complete` tells a retry that an earlier attempt finished.
    func planStored(
        _ terminals: [String], command: PushCommand, id: String, earlierExpiresAt: Int64?, completeWhenStored: Bool = false
    ) -> StoredPushPlan {
        let retry = earlierExpiresAt != nil
        let expiresAt = earlierExpiresAt ?? FleetClock.nowMillis() + Int64(command.ttl) * 1000
        var commands =
            retry ? [] : statusRecord(id: id, command: command, terminals: terminals, expiresAt: expiresAt, complete: completeWhenStored)
        let storeStart = commands.count
        var entries: [String: String] = [:]
        let ttlMillis = String(Int64(command.ttl) * 1000)
        commands.reserveCapacity(commands.count + terminals.count * Self.plainStoreCommands)
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
            // The list lives as long as its longest-lived entry: set when it has no expiry,
            // extended when this one lives longer.
            commands.append(RedisCommand("PEXPIRE", queue, ttlMillis, "NX"))
            commands.append(RedisCommand("PEXPIRE", queue, ttlMillis, "GT"))
            commands.append(RedisCommand("HGET", keys.route(terminal), "node"))
        }
        return StoredPushPlan(
            terminals: terminals, id: id, entries: entries, commands: commands, storeStart: storeStart, retry: retry,
            completeWhenStored: completeWhenStored && !retry)
    }

    /// A new unicast message's status record: its metadata and `queued` for every target, in
    /// one hash (the counts are derived from the targets' states when it is read), created
    /// with its expiry: one HSET and one EXPIRE for up to 500 targets.
    private func statusRecord(id: String, command: PushCommand, terminals: [String], expiresAt: Int64, complete: Bool) -> [RedisCommand] {
        let key = keys.messageStatus(id)
        typealias Field = MessageStatusField
        var fields = [
            key, Field.createdAt, String(FleetClock.nowMillis()), Field.kind, "unicast", Field.qos, String(command.qos), Field.ttl,
            String(command.ttl), Field.targets, String(terminals.count), "expiresAt", String(expiresAt),
        ]
        if complete { fields += [Field.complete, "1"] }
        var commands: [RedisCommand] = []
        for start in stride(from: 0, to: max(terminals.count, 1), by: 500) {
            for terminal in terminals[start..<min(start + 500, terminals.count)] {
                fields += [Field.target(terminal), MessageState.queued.rawValue]
            }
            commands.append(RedisCommand("HSET", fields))
            fields = [key]
        }
        commands.append(RedisCommand("EXPIRE", key, String(configuration.statusRetention)))
        return commands
    }

    /// Commands sent once stored pushes' first pipeline answered.
    struct FollowUp {
        var commands: [RedisCommand] = []
        /// Where in `commands` a list the push made longer than the cap is trimmed, and whose.
        var trims: [(index: Int, terminal: String)] = []
    }

    /// What follows a stored push's first pipeline: lists over the cap trimmed (their oldest
    /// entries then count as `dropped`), its targets' nodes added to `wakes`, and the status
    /// marked complete (unless it was created so).
    func followUp(_ plan: StoredPushPlan, replies: ArraySlice<RedisReply>, wakes: WakeBatch, into followUp: inout FollowUp) {
        var byNode: [String: [String]] = [:]
        let cap = Int64(configuration.offlineQueueCap)
        for (offset, terminal) in plan.terminals.enumerated() {
            let node: String?
            if plan.retry {
                // The route's node, then what the cap pushed out.
                let reply = replies[replies.startIndex + plan.storeStart + offset].array ?? []
                node = reply.first?.string
                let dropped = reply.dropFirst().compactMap { $0.string.flatMap(StoredMessage.decode) }
                followUp.commands += dropped.map { transition($0.id, terminal: terminal, to: .dropped) }
            } else {
                let base = replies.startIndex + plan.storeStart + offset * Self.plainStoreCommands
                node = replies[base + 3].string
                if let length = replies[base].int, length > cap {
                    followUp.trims.append((followUp.commands.count, terminal))
                    followUp.commands.append(FleetScripts.trim.command(keys: [keys.queue(terminal)], arguments: [String(cap)]))
                }
            }
            if let node, !node.isEmpty { byNode[node, default: []].append(terminal) }
        }
        wakes.add(byNode, entries: plan.entries)
        if !plan.completeWhenStored { followUp.commands.append(RedisCommand("HSET", keys.messageStatus(plan.id), "complete", "1")) }
    }

    /// Sends a follow-up, then records `dropped` for the entries its trims pushed out.
    func send(_ followUp: FollowUp) async throws -> [RedisReply] {
        guard !followUp.commands.isEmpty else { return [] }
        let replies = try await redis.pipeline(followUp.commands)
        var dropped: [RedisCommand] = []
        for (index, terminal) in followUp.trims {
            for entry in replies[index].array ?? [] {
                guard let message = entry.string.flatMap(StoredMessage.decode) else { continue }
                dropped.append(transition(message.id, terminal: terminal, to: .dropped))
            }
        }
        if !dropped.isEmpty { _ = try await redis.pipeline(dropped) }
        return replies
    }

    private func pushToTerminals(
        _ terminals: [String], command: PushCommand, id: String, earlierExpiresAt: Int64?, wakes: WakeBatch?
    ) async throws -> PushReceipt {
        guard command.ttl > 0 else {
            return try await pushOnline(terminals, command: command, id: id, earlierAttempt: earlierExpiresAt != nil)
        }
        let plan = planStored(terminals, command: command, id: id, earlierExpiresAt: earlierExpiresAt)
        let replies = try await redis.pipeline(plan.commands)
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        let batch = wakes ?? WakeBatch()
        var followUp = FollowUp()
        self.followUp(plan, replies: replies[...], wakes: batch, into: &followUp)
        do {
            let results = try await send(followUp)
            if let failure = results.first(where: \.isError) {
                logger.warning("push follow-up failed", metadata: ["message": "\(id)", "error": "\(failure)"])
            }
        } catch {
            // Stored is accepted: the wake is only a hint, the terminals find the message on
            // their next wake or connect.
            logger.warning("push stored but nodes not notified", metadata: ["message": "\(id)", "error": "\(error)"])
            return PushReceipt(id: id, targets: terminals.count)
        }
        if wakes == nil { await sendWakes(batch) }
        return PushReceipt(id: id, targets: terminals.count)
    }

    /// An online-only push (ttl 0): nothing is stored; each node holding targets gets the
    /// message once, the others' targets count as dropped.
    private func pushOnline(_ terminals: [String], command: PushCommand, id: String, earlierAttempt: Bool) async throws -> PushReceipt {
        var commands = earlierAttempt ? [] : statusRecord(id: id, command: command, terminals: terminals, expiresAt: 0, complete: false)
        let routeStart = commands.count
        for terminal in terminals { commands.append(RedisCommand("HGET", keys.route(terminal), "node")) }
        let replies = try await redis.pipeline(commands)
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        var followUp: [RedisCommand] = []
        // Online-only events: index in `followUp` and the terminals they address.
        var liveEvents: [(Int, [String])] = []
        var byNode: [String: [String]] = [:]
        var offline: [String] = []
        for (offset, terminal) in terminals.enumerated() {
            if let node = replies[routeStart + offset].string, !node.isEmpty {
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
        for terminal in offline { followUp.append(transition(id, terminal: terminal, to: .dropped)) }
        followUp.append(RedisCommand("HSET", keys.messageStatus(id), "complete", "1"))
        // Nothing is stored: if the nodes cannot be told, the push fails.
        let results = try await redis.pipeline(followUp)
        if let failure = results.first(where: \.isError) {
            logger.warning("push follow-up failed", metadata: ["message": "\(id)", "error": "\(failure)"])
        }
        // An online-only event no node received is dropped for its terminals.
        let unheard = liveEvents.filter { results[$0.0].int == 0 }.flatMap(\.1)
        if !unheard.isEmpty {
            _ = try await redis.pipeline(unheard.map { transition(id, terminal: $0, to: .dropped) })
        }
        return PushReceipt(id: id, targets: terminals.count)
    }

    /// A topic push goes where a terminal's publish on that topic would: to the nodes with
    /// matching subscriptions and, with ttl > 0 and QoS > 0, into the lists of absent
    /// persistent sessions subscribed to it (expiring with the ttl). Its status counts no
    /// targets: the subscribers are not known in advance.
    private func publishToTopic(_ command: PushCommand, topic: String, id: String) async throws -> PushReceipt {
        let expiresAt = command.ttl > 0 ? FleetClock.nowMillis() + Int64(command.ttl) * 1000 : 0
        let message = StoredMessage(id: id, qos: command.qos, expiresAt: expiresAt, topic: topic, payload: command.payload)
        let replies = try await redis.pipeline(statusCommands(id: id, command: command, kind: "topic", targets: 0))
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        let outcome = try await router.route(message, storeForAbsent: command.ttl > 0 && command.qos > 0).get()
        _ = try await redis.send(
            RedisCommand(
                "HSET", keys.messageStatus(id), MessageStatusField.complete, "1", MessageStatusField.nodes, String(outcome.nodes),
                MessageStatusField.storedForSessions, String(outcome.stored)
            )
        )
        return PushReceipt(id: id, targets: 0)
    }

    private func publishLive(_ command: PushCommand, topic: String, id: String, kind: String) async throws -> PushReceipt {
        let message = StoredMessage(id: id, qos: command.qos, expiresAt: 0, topic: topic, payload: command.payload)
        var commands = statusCommands(id: id, command: command, kind: kind, targets: 0)
        commands.append(RedisCommand("PUBLISH", keys.broadcastChannel, NodeEvent(kind: .deliver, message: message).encoded()))
        let replies = try await redis.pipeline(commands)
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        // Every node that heard it counts the terminals it wrote it to into `delivered`.
        let nodes = replies.last?.int ?? 0
        _ = try await redis.send(
            RedisCommand("HSET", keys.messageStatus(id), MessageStatusField.complete, "1", MessageStatusField.nodes, String(nodes)))
        return PushReceipt(id: id, targets: 0)
    }

    /// Accepts many pushes at once (the batch endpoint). New stored pushes to terminals
    /// (ttl > 0, no idempotency key) share one pipeline for storing and one for completing;
    /// the others go through ``push(_:id:wakes:)`` one after the other. Each push is accepted or fails
    /// on its own; `wakes` collects the nodes to notify.
    public func pushMany(_ commands: [PushCommand], wakes: WakeBatch) async -> [Result<PushReceipt, any Error>] {
        var results = [Result<PushReceipt, any Error>?](repeating: nil, count: commands.count)
        var plans: [(index: Int, plan: StoredPushPlan)] = []
        var others: [Int] = []
        for (index, command) in commands.enumerated() {
            if case .terminals(let terminals) = command.audience, command.ttl > 0, command.idempotencyKey == nil {
                let plan = planStored(
                    Array(Set(terminals)).sorted(), command: command, id: FleetClock.newMessageID(), earlierExpiresAt: nil,
                    completeWhenStored: true)
                plans.append((index, plan))
            } else {
                others.append(index)
            }
        }
        if !plans.isEmpty {
            do {
                let replies = try await redis.pipeline(plans.flatMap(\.plan.commands))
                var followUps = FollowUp()
                var start = 0
                for (index, plan) in plans {
                    let slice = replies[start..<start + plan.commands.count]
                    start += plan.commands.count
                    if let failure = slice.first(where: \.isError) {
                        results[index] = .failure(RedisError(.server, failure.description))
                        // Its status was created complete: a refused push leaves no record.
                        followUps.commands.append(RedisCommand("DEL", keys.messageStatus(plan.id)))
                        continue
                    }
                    followUp(plan, replies: slice, wakes: wakes, into: &followUps)
                    results[index] = .success(PushReceipt(id: plan.id, targets: plan.terminals.count))
                    Counter(label: "pushfleet_control_pushes_total", dimensions: [("kind", "unicast")]).increment()
                    Counter(label: "pushfleet_control_push_targets_total").increment(by: plan.terminals.count)
                }
                do {
                    _ = try await send(followUps)
                } catch {
                    // Stored is accepted; the status shows them incomplete until a node delivers.
                    logger.warning("batch stored but not completed", metadata: ["error": "\(error)"])
                }
            } catch {
                for (index, _) in plans { results[index] = .failure(error) }
            }
        }
        // The rest one after the other (topic pushes, retries with an idempotency key, online
        // only pushes): each has its own round trips.
        for index in others {
            do {
                results[index] = .success(try await push(commands[index], wakes: wakes))
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

    func transition(_ id: String, terminal: String, to state: MessageState) -> RedisCommand {
        FleetScripts.transition.command(
            keys: [keys.messageStatus(id)], arguments: [terminal, state.rawValue, MessageStatusField.targetPrefix])
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
