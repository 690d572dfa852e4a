import FleetCore
import FleetRedis
import NIOCore
import RedisClient

/// Routing of messages terminals publish (and wills) through the fleet: ``TopicRouter``
/// with this node's own sessions served directly.
extension PushNodeContext {
    /// Routes a terminal's message; succeeds once Redis has taken it (when its PUBACK /
    /// PUBREC may go out). QoS 0 messages are not kept for absent sessions (MQTT allows
    /// either; Mosquitto's default too).
    func route(_ message: StoredMessage) -> EventLoopFuture<Void> {
        let metrics = self.metrics
        return router.route(message, storeForAbsent: message.qos > 0).map { outcome in
            if outcome.nodes > 0 { metrics.routed.increment() }
            metrics.storedForSessions.increment(by: outcome.stored)
            metrics.ledger.entered(expiresAt: message.expiresAt, count: outcome.stored)
        }
    }

    /// Hands a routed message to this node's sessions.
    func deliverLocally(_ message: StoredMessage, target: NodeTarget) {
        Self.deliver(message, target: target, local: local, registry: registry, metrics: metrics)
    }

    /// Hands a routed message to a node's sessions: every session with a matching ordinary
    /// subscription, and one member of each shared subscription named in `target`.
    static func deliver(
        _ message: StoredMessage, target: NodeTarget, local: LocalSubscriptions, registry: SessionRegistry, metrics: PushNodeMetrics
    ) {
        // Decoded once for every receiver.
        let payload = message.payloadBuffer()
        if target.ordinary {
            for member in local.members(matching: message.topic) {
                guard let handle = registry.handle(for: member.terminal), handle.epoch == member.epoch else { continue }
                handle.execute { $0.deliverPublished(message, shared: nil, payload: payload) }
            }
        }
        for shared in target.shares {
            guard let member = local.nextMember(of: shared), let handle = registry.handle(for: member.terminal),
                handle.epoch == member.epoch
            else {
                metrics.dropped.increment()
                continue
            }
            handle.execute { $0.deliverPublished(message, shared: shared, payload: payload) }
        }
    }

    func storedSubscriptionsCommands(terminal: String, adding: Bool, filters: [String]) -> [RedisCommand] {
        router.storedSubscriptionsCommands(terminal: terminal, adding: adding, filters: filters)
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
