import FleetCore
import FleetRedis
import Logging
import RedisClient

/// Stored pushes to terminals: the plan per message, the pipeline a batch shares, and what
/// follows it.
extension PushDispatcher {
    /// The commands that store one push (ttl > 0) and read its targets' routes: per target
    /// its entry appended, the list's expiry set or extended, and its route read, in plain
    /// commands (Lua costs Redis several times more per call on this path); a retry appends
    /// with ``FleetScripts/store``, which skips entries already there. ``storedPipeline(_:)``
    /// puts the status around them.
    struct StoredPushPlan {
        var terminals: [String]
        var id: String
        /// When its entries expire (unix milliseconds).
        var expiresAt: Int64
        var qos: UInt8
        /// terminal -> its stored entry, for wake events (empty for a
        /// retry: its entries may be in the lists already, and the nodes then read the lists).
        var entries: [String: String]
        /// The store commands (``plainStoreCommands`` per target, or one script per target for
        /// a retry).
        var commands: [RedisCommand]
        /// A retry: one ``FleetScripts/store`` per target.
        var retry: Bool
        /// A push with a collapse key: one ``FleetScripts/storeCollapsing`` per target (which
        /// reads the route, as a retry's script does).
        var collapsing: Bool
        /// The status record to create (nil for a retry: the earlier attempt created it).
        var record: MessageStatusRecord?
        /// The id can be attempted again (a command stream entry, a push with an idempotency
        /// key): its status is marked `complete` once stored, which a later attempt looks for.
        /// A new id of the API is never tried again, and needs no mark.
        var retryable: Bool
    }

    /// Commands per target of a new push: RPUSH, PEXPIRE NX, PEXPIRE GT (the routes are read
    /// for the whole pipeline with one MGET, ``storedPipeline(_:)``).
    static let plainStoreCommands = 3

    /// - Parameter earlierExpiresAt: set when an earlier attempt of this message created its
    ///   status: the entries are rebuilt byte for byte (same expiry) and appended only where
    ///   they are missing.
    /// - Parameter retryable: the id can be attempted again (``StoredPushPlan/retryable``).
    func planStored(_ terminals: [String], command: PushCommand, id: String, earlierExpiresAt: Int64?, retryable: Bool)
        -> StoredPushPlan
    {
        let retry = earlierExpiresAt != nil
        let now = FleetClock.nowMillis()
        let expiresAt = earlierExpiresAt ?? now + Int64(command.ttl) * 1000
        var entries: [String: String] = [:]
        let ttlMillis = String(Int64(command.ttl) * 1000)
        var commands: [RedisCommand] = []
        commands.reserveCapacity(terminals.count * Self.plainStoreCommands)
        let collapsing = command.collapseKey != nil
        for terminal in terminals {
            var message = StoredMessage(id: id, qos: command.qos, expiresAt: expiresAt, topic: "push/\(terminal)", payload: command.payload)
            message.collapse = command.collapseKey
            let entry = message.encoded()
            let queue = keys.queue(terminal)
            if let collapseKey = command.collapseKey {
                // Nodes read the list at the wake (no entries with it): what it holds changed.
                commands.append(
                    FleetScripts.storeCollapsing.command(
                        keys: [queue, keys.route(terminal), keys.collapse(terminal), keys.sent(terminal)],
                        arguments: [entry, String(configuration.offlineQueueCap), ttlMillis, retry ? "1" : "0", collapseKey]))
                continue
            }
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
            : MessageStatusRecord(
                kind: "unicast", qos: Int(command.qos), ttl: command.ttl, createdAt: now, expiresAt: expiresAt, targets: terminals)
        return StoredPushPlan(
            terminals: terminals, id: id, expiresAt: expiresAt, qos: command.qos, entries: entries, commands: commands, retry: retry,
            collapsing: collapsing, record: record,
            retryable: retryable || retry)
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
    /// route is read here), then `complete` for those that can be attempted again: Redis runs
    /// a connection's commands in order, so a status found complete had all its entries stored.
    /// In Redis Cluster the status and the lists are on different masters, with no order
    /// between them: there `complete` is left out, and ``markComplete(_:)`` writes it once the
    /// stores have answered.
    func storedPipeline(_ plans: [StoredPushPlan]) -> StoredPipeline {
        var records = StatusWrites()
        var complete = StatusWrites()
        let marksComplete = !redis.isCluster
        for plan in plans {
            if let record = plan.record { records.set(MessageStatusField.record(plan.id), record.encoded, of: plan.id) }
            if plan.retryable && marksComplete { complete.set(MessageStatusField.complete(plan.id), "1", of: plan.id) }
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
            if !plan.retry && !plan.collapsing { routeKeys += plan.terminals.map(keys.route) }
        }
        var routes: Int?
        if !routeKeys.isEmpty {
            routes = commands.count
            commands.append(RedisCommand("MGET", routeKeys))
        }
        commands += complete.commands(keys: keys)
        return StoredPipeline(commands: commands, starts: starts, routes: routes, routeStarts: routeStarts)
    }

    /// In Redis Cluster: marks `plans` (stored, answered) `complete`, after a replica has their
    /// entries under ``Durability/replica``: a retry then finds them done. Throws when a
    /// replica did not confirm or the marks were not written; a retry then stores again what
    /// is missing (its script skips entries already there). Nothing to do on one server, where
    /// the marks went in the stores' pipeline.
    func markComplete(_ plans: [StoredPushPlan]) async throws {
        let retryable = plans.filter(\.retryable)
        guard redis.isCluster, !retryable.isEmpty else { return }
        guard try await replicated() else { throw notReplicated(retryable[0].id) }
        var complete = StatusWrites()
        for plan in retryable { complete.set(MessageStatusField.complete(plan.id), "1", of: plan.id) }
        let replies = try await redis.pipeline(complete.commands(keys: keys))
        if let failure = replies.first(where: \.isError) { throw RedisError(.server, failure.description) }
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
        ledger.entered(expiresAt: plan.expiresAt, count: plan.terminals.count)
        metrics.stored.increment(by: plan.terminals.count)
        for (offset, terminal) in plan.terminals.enumerated() {
            let node: String?
            if plan.retry || plan.collapsing {
                // The route's node, the entry replaced (collapsing), then what the cap pushed out.
                let reply = replies[replies.startIndex + offset].array ?? []
                node = reply.first?.string
                var rest = reply.dropFirst()
                if plan.collapsing {
                    if let replaced = rest.first?.string.flatMap(StoredMessage.decode) {
                        ledger.left(expiresAt: replaced.expiresAt)
                        followUp.states.record(.replaced, of: replaced.id, terminal: terminal, at: now)
                    }
                    rest = rest.dropFirst()
                }
                for dropped in rest.compactMap({ $0.string.flatMap(StoredMessage.decode) }) {
                    ledger.left(expiresAt: dropped.expiresAt)
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
                ledger.left(expiresAt: message.expiresAt)
                dropped.record(.dropped, of: message.id, terminal: terminal, at: now)
            }
        }
        if !dropped.isEmpty { _ = try await redis.pipeline(statusCommands(dropped)) }
    }

    /// The routes the pipeline's MGET read (empty when it had none).
    static func routes(_ pipeline: StoredPipeline, _ replies: [RedisReply]) -> [RedisReply] {
        pipeline.routes.flatMap { replies[$0].array } ?? []
    }

    /// A push that failed part way had its status written complete in the same pipeline:
    /// that is taken back, so a retry finishes it rather than taking it for done.
    func takeBackComplete(_ ids: [String]) async {
        guard !ids.isEmpty else { return }
        var byBucket: [StatusBucket: [String]] = [:]
        for id in ids { byBucket[StatusBucket(messageID: id), default: []].append(MessageStatusField.complete(id)) }
        do {
            _ = try await redis.pipeline(byBucket.map { RedisCommand("HDEL", [keys.statusBucket($0.key)] + $0.value) })
        } catch {
            logger.warning("a failed push's status could not be taken back", metadata: ["messages": "\(ids)", "error": "\(error)"])
        }
    }

}
