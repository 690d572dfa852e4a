import FleetCore
import FleetRedis
import Logging
import MQTTCodec
import Metrics
import RedisClient

/// What every connection handler on a node shares: one object per node (a class, so each
/// connection holds a reference, not a copy of the configuration and all the rest).
final class PushNodeContext: Sendable {
    let configuration: PushNodeConfiguration
    let redis: RedisConnection
    let registry: SessionRegistry
    let credentials: CredentialAuthority
    let logger: Logger
    let metrics: PushNodeMetrics
    let connectLimiter: ConnectRateLimiter?
    /// The fleet's routing table for terminal publishes.
    let index: SubscriptionIndex
    /// This node's sessions' subscriptions.
    let local: LocalSubscriptions
    let acl: TopicACL
    let router: TopicRouter
    /// Delivery states for the messages' status records, batched.
    let status: StatusRecorder
    /// The `sent` records of messages in flight, written a tick late (most never are).
    let sent: SentRecorder
    /// Session registrations, one script call per tick.
    let registrations: RegistrationBatcher
    /// Keep-alive checks, one sweeper per event loop.
    let keepAliveSweepers = KeepAliveSweepers()
    /// Connections held, against ``PushNodeConfiguration/maximumConnections``.
    let connectionSlots: ConnectionSlots
    /// What the node's MQTT sessions share.
    let sessionEnvironment: SessionEnvironment

    init(
        configuration: PushNodeConfiguration, redis: RedisConnection, registry: SessionRegistry, credentials: CredentialAuthority,
        logger: Logger, metrics: PushNodeMetrics, connectLimiter: ConnectRateLimiter?, index: SubscriptionIndex,
        local: LocalSubscriptions, acl: TopicACL, router: TopicRouter
    ) {
        self.configuration = configuration
        self.redis = redis
        self.registry = registry
        self.credentials = credentials
        self.logger = logger
        self.metrics = metrics
        self.connectLimiter = connectLimiter
        self.index = index
        self.local = local
        self.acl = acl
        self.router = router
        self.status = StatusRecorder(redis: redis, keys: configuration.keys, events: configuration.statusEvents, logger: logger)
        self.sent = SentRecorder(redis: redis, keys: configuration.keys, interval: configuration.sentRecordInterval)
        self.registrations = RegistrationBatcher(redis: redis, keys: configuration.keys, nodeID: configuration.nodeID)
        self.connectionSlots = ConnectionSlots(limit: configuration.maximumConnections)
        self.sessionEnvironment = SessionEnvironment(
            configuration: configuration, credentials: credentials, acl: acl, local: local, metrics: metrics, logger: logger)
    }

    var keys: FleetKeys { configuration.keys }
    var nodeID: String { configuration.nodeID }

    /// Sends `command` (a takeover's `stopped` answer) once what the node's sessions wrote
    /// before it is in Redis. On one server that is ordering on the connection; in Redis
    /// Cluster the writes went to the terminals' masters and the answer goes to another, so
    /// it waits for the removals waiting on their states, then for every master's replies.
    func sendAfterWrites(_ command: RedisCommand) {
        guard redis.isCluster else { return redis.fireAndForget([command]) }
        let redis = self.redis
        status.settled().flatMap { redis.barrier() }.whenComplete { _ in redis.fireAndForget([command]) }
    }
}

/// Metric names and handles of a push node (dimensions are bounded: never a terminal id).
struct PushNodeMetrics: Sendable {
    let connections = Meter(label: "pushfleet_node_connections")
    let connectsAccepted = Counter(label: "pushfleet_node_connects_total", dimensions: [("result", "accepted")])
    let connectsRefused = Counter(label: "pushfleet_node_connects_total", dimensions: [("result", "refused")])
    let connectsThrottled = Counter(label: "pushfleet_node_connects_throttled_total")
    let delivered = DeliveryCounters()
    let acknowledged = Tally(label: "pushfleet_node_messages_acknowledged_total")
    let expired = Counter(label: "pushfleet_node_messages_expired_total")
    let dropped = Counter(label: "pushfleet_node_messages_dropped_total")
    let protocolErrors = Counter(label: "pushfleet_node_protocol_errors_total")
    /// Messages terminals published, by QoS.
    let published = (0...2).map { Counter(label: "pushfleet_node_terminal_publishes_total", dimensions: [("qos", "\($0)")]) }
    let publishesRefused = Counter(label: "pushfleet_node_terminal_publishes_refused_total")
    let routed = Counter(label: "pushfleet_node_publishes_routed_total")
    let storedForSessions = Counter(label: "pushfleet_node_messages_stored_for_sessions_total")
    let willsPublished = Counter(label: "pushfleet_node_wills_published_total")
    /// Times the node fell so far behind its subscriber that events were dropped (it then
    /// re-reads the index and has every session re-read its list).
    let subscriberOverflows = Counter(label: "pushfleet_node_subscriber_overflows_total")
    /// Delayed wills kept in Redis until due.
    let willsKept = Counter(label: "pushfleet_node_wills_kept_total")
    /// Delayed wills published at once because the fleet held its bound of them.
    let willsUndelayed = Counter(label: "pushfleet_node_wills_undelayed_total")
    /// Entries this node put into terminals' lists and took out, for the fleet's `queued`
    /// figure (written with the heartbeat).
    let ledger = QueueLedger()
    /// QoS 1 and 2 messages in flight (counted by the sessions' windows; made here so it is
    /// exported from the start).
    let inflight = OutboundWindow.inflightMessages
}

/// Messages written to terminals, by QoS and path (`stored`: read from the terminal's list;
/// `live`: online-only pushes, broadcasts, messages terminals published), and their total for
/// the heartbeat.
struct DeliveryCounters: Sendable {
    /// `counters[qos * 2 + (stored ? 0 : 1)]`.
    private let counters: [Counter] = (0...2).flatMap { qos in
        ["stored", "live"].map { Counter(label: "pushfleet_node_messages_delivered_total", dimensions: [("qos", "\(qos)"), ("path", $0)]) }
    }
    private let total = Tally()

    func increment(qos: MQTTQoS, stored: Bool) {
        counters[Int(qos.rawValue) * 2 + (stored ? 0 : 1)].increment()
        total.increment()
    }

    /// Messages written since the node started.
    var value: Int64 { total.value }
}
