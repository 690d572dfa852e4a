import FleetCore
import NIOCore
import RedisClient

/// Routing of messages terminals publish (and wills) through the fleet.
///
/// The fleet index names the nodes with a matching subscription: each gets one SPUBLISH on
/// its channel per message (this node delivers to its own sessions directly). Persistent
/// sessions subscribed to a matching filter are looked up in Redis and the message is stored
/// for those that are not connected. The returned future succeeds once Redis has taken all
/// of it, which is when the publisher's PUBACK / PUBREC may go out.
extension PushNodeContext {
    func route(_ message: StoredMessage) -> EventLoopFuture<Void> {
        var commands: [RedisCommand] = []
        if message.retain == true {
            if message.payload.isEmpty {
                commands.append(RedisCommand("HDEL", keys.retained, message.topic))
            } else {
                commands.append(RedisCommand("HSET", keys.retained, message.topic, message.encoded()))
            }
        }
        let route = index.route(topic: message.topic)
        for (owner, target) in route.nodes {
            if owner == nodeID {
                deliverLocally(message, target: target)
            } else {
                let event = NodeEvent(kind: .publish, message: message, target: target)
                commands.append(RedisCommand("SPUBLISH", keys.nodeChannel(owner), event.encoded()))
            }
        }
        // QoS 0 messages are not kept for absent sessions (MQTT allows either; Mosquitto's default too).
        let storedFilters = message.qos > 0 ? route.storedFilters : []
        for filter in storedFilters { commands.append(RedisCommand("SMEMBERS", keys.storedSubscribers(filter))) }
        guard !commands.isEmpty else { return redis.eventLoop.makeSucceededVoidFuture() }
        metrics.routed.increment()
        return redis.pipelineFuture(commands).flatMap { replies in
            do {
                for reply in replies { _ = try reply.throwingError() }
            } catch {
                return redis.eventLoop.makeFailedFuture(error)
            }
            guard !storedFilters.isEmpty else { return redis.eventLoop.makeSucceededVoidFuture() }
            // terminal -> the matching filters it holds (a terminal matching twice is stored once).
            var subscribers: [String: [String]] = [:]
            for (filter, reply) in zip(storedFilters, replies.suffix(storedFilters.count)) {
                for terminal in reply.array?.compactMap(\.string) ?? [] { subscribers[terminal, default: []].append(filter) }
            }
            return storeForAbsentSubscribers(message, subscribers: subscribers)
        }
    }

    private func storeForAbsentSubscribers(_ message: StoredMessage, subscribers: [String: [String]]) -> EventLoopFuture<Void> {
        guard !subscribers.isEmpty else { return redis.eventLoop.makeSucceededVoidFuture() }
        var stored = message
        stored.session = true
        let entry = stored.encoded()
        let ttl =
            message.expiresAt > 0 ? max(1, message.expiresAt - FleetClock.nowMillis()) : Int64(configuration.maximumSessionExpiry) * 1000
        let terminals = Array(subscribers.keys)
        let commands = terminals.map { terminal in
            FleetScripts.storeForSubscriber.command(
                keys: [keys.session(terminal), keys.route(terminal), keys.queue(terminal)],
                arguments: [entry, String(configuration.offlineQueueCap), String(ttl)]
            )
        }
        return redis.pipelineFuture(commands).flatMapThrowing { replies in
            var gone: [RedisCommand] = []
            for (terminal, reply) in zip(terminals, replies) {
                switch try reply.throwingError().int {
                case -1:
                    // The session expired: it leaves the filters' stored-subscriber sets.
                    gone.append(storedSubscriptionsCommand(terminal: terminal, adding: false, filters: subscribers[terminal] ?? []))
                case 1:
                    metrics.storedForSessions.increment()
                default:
                    break
                }
            }
            if !gone.isEmpty { redis.fireAndForget(gone) }
        }
    }

    /// Hands a routed message to this node's sessions: every session with a matching ordinary
    /// subscription, and one member of each shared subscription named in `target`.
    func deliverLocally(_ message: StoredMessage, target: NodeTarget) {
        if target.ordinary {
            for member in local.members(matching: message.topic) {
                guard let handle = registry.handle(for: member.terminal), handle.epoch == member.epoch else { continue }
                handle.execute { $0.deliverPublished(message, shared: nil) }
            }
        }
        for shared in target.shares {
            guard let member = local.nextMember(of: shared), let handle = registry.handle(for: member.terminal),
                handle.epoch == member.epoch
            else {
                metrics.dropped.increment()
                continue
            }
            handle.execute { $0.deliverPublished(message, shared: shared) }
        }
    }

    /// The command adding a persistent session to (or removing it from) the stored-subscriber
    /// sets of `filters`.
    func storedSubscriptionsCommand(terminal: String, adding: Bool, filters: [String]) -> RedisCommand {
        FleetScripts.storedSubscriptions.command(
            keys: [keys.index(SubscriptionIndex.storedOwner)] + filters.map(keys.storedSubscribers),
            arguments: [keys.indexChannel, terminal, adding ? "+" : "-"] + filters
        )
    }

    /// The command announcing that this node gained its first or lost its last subscription
    /// to filters. This node's own copy of the index changes at once, so its sessions' own
    /// publishes find the subscription without waiting for the announcement to come back.
    func indexUpdateCommand(adding: Bool, filters: [String]) -> RedisCommand {
        index.apply(IndexChange(owner: nodeID, operation: adding ? .add : .remove, filters: filters))
        return FleetScripts.indexUpdate.command(
            keys: [keys.index(nodeID)], arguments: [keys.indexChannel, nodeID, adding ? "+" : "-"] + filters)
    }
}
