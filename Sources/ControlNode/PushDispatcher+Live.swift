import FleetCore
import FleetRedis
import Logging
import RedisClient

/// Pushes that store nothing for terminals: online-only pushes to terminals, topic pushes and
/// broadcasts.
extension PushDispatcher {
    /// A topic push's or broadcast's status record, and its bucket's expiry.
    func statusCommands(id: String, command: PushCommand, kind: String) -> [RedisCommand] {
        // A broadcast reaches the terminals online at that moment: nothing waits, whatever its ttl.
        let ttl = kind == "broadcast" ? 0 : command.ttl
        let record = MessageStatusRecord(kind: kind, qos: Int(command.qos), ttl: ttl, createdAt: FleetClock.nowMillis(), expiresAt: 0)
        var writes = StatusWrites()
        writes.set(MessageStatusField.record(id), record.encoded, of: id)
        return statusCommands(writes)
    }

    /// An online-only push (ttl 0): nothing is stored; each node holding targets gets the
    /// message once, the others' targets count as dropped.
    func pushOnline(_ terminals: [String], command: PushCommand, id: String, earlierAttempt: Bool) async throws -> PushReceipt {
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
        let results = try await redis.pipeline(
            followUp + states.commands(keys: keys) + states.eventCommands(keys: keys, length: configuration.statusEvents))
        if let failure = results.first(where: \.isError) {
            logger.warning("push follow-up failed", metadata: ["message": "\(id)", "error": "\(failure)"])
        }
        // An online-only event no node received is dropped for its terminals.
        var unheard = StatusWrites()
        for (index, held) in liveEvents where results[index].int == 0 {
            for terminal in held { unheard.record(.dropped, of: id, terminal: terminal, at: now) }
        }
        if !unheard.isEmpty {
            _ = try await redis.pipeline(
                unheard.commands(keys: keys) + unheard.eventCommands(keys: keys, length: configuration.statusEvents))
        }
        return PushReceipt(id: id, targets: terminals.count)
    }

    /// A topic push goes where a terminal's publish on that topic would: to the nodes with
    /// matching subscriptions and, with ttl > 0 and QoS > 0, into the lists of absent
    /// persistent sessions subscribed to it (expiring with the ttl). Its status counts no
    /// targets: the subscribers are not known in advance.
    func publishToTopic(_ command: PushCommand, topic: String, id: String) async throws -> PushReceipt {
        let expiresAt = command.ttl > 0 ? FleetClock.nowMillis() + Int64(command.ttl) * 1000 : 0
        let message = StoredMessage(id: id, qos: command.qos, expiresAt: expiresAt, topic: topic, payload: command.payload)
        let replies = try await redis.pipeline(statusCommands(id: id, command: command, kind: "topic"))
        if let failure = replies.first(where: \.isError) {
            throw RedisError(.server, failure.description)
        }
        let outcome = try await router.route(message, storeForAbsent: command.ttl > 0 && command.qos > 0).get()
        ledger.entered(expiresAt: expiresAt, count: outcome.stored)
        metrics.stored.increment(by: outcome.stored)
        var done = StatusWrites()
        done.set(MessageStatusField.complete(id), "1", of: id)
        done.set(MessageStatusField.nodes(id), String(outcome.nodes), of: id)
        done.set(MessageStatusField.storedForSessions(id), String(outcome.stored), of: id)
        _ = try await redis.pipeline(done.commands(keys: keys))
        return PushReceipt(id: id, targets: 0)
    }

    func publishLive(_ command: PushCommand, topic: String, id: String, kind: String) async throws -> PushReceipt {
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
}
