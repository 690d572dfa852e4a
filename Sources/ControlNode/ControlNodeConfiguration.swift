import FleetCore
import RedisClient

/// Everything a control node needs to run.
///
/// `secret` signs terminal credentials and must be shared with every push node. When `apiKey`
/// or `apiKeys` are set, every call needs `Authorization: Bearer <key>` with a key of the
/// route's scope, but health, readiness and metrics, which stay open. Limits protect Redis and the push nodes: a message larger than
/// `maximumPayloadSize` is refused with 413, a terminal's stored list keeps at most
/// `offlineQueueCap` entries (older ones are dropped and counted), and message status records
/// expire after `statusRetention` seconds.
public struct ControlNodeConfiguration: Sendable {
    public var redis: RedisConfiguration
    public var host: String
    public var port: Int
    public var secret: String
    /// A key with every scope (`--api-key`).
    public var apiKey: String?
    /// More keys, each with its scopes and rate (`--api-keys-file`).
    public var apiKeys: [APIKey] = []
    public var keys = FleetKeys()
    /// Largest payload accepted, in bytes.
    public var maximumPayloadSize = 128 * 1024
    /// Most pushes in one `POST /v1/push/batch`.
    public var maximumBatchSize = 1_000
    /// Most targets in one push.
    public var maximumTargets = 10_000
    /// Most targets across the pushes of one request (a batch); beyond it 413.
    public var maximumRequestTargets = 100_000
    /// Most bytes one request may store (each stored push's payload times its targets);
    /// beyond it 413.
    public var maximumRequestBytes = 64 << 20
    /// Most entries kept in one terminal's stored list.
    public var offlineQueueCap = 1_000
    /// Lifetime in seconds of a message stored without an expiry of its own (push nodes use
    /// their longest session expiry for the same).
    public var maximumStoredLifetime = 7 * 24 * 3600
    /// Longest ttl accepted for a message, in seconds.
    public var maximumTTL = 30 * 86_400
    /// Every delivery state change is appended to ``FleetKeys/statusEvents``, kept to about
    /// this many entries; 0: off.
    public var statusEvents = 0
    /// Posts ``FleetKeys/statusEvents`` to a URL (needs `statusEvents` on every node).
    public var statusWebhook: StatusWebhookConfiguration?
    /// How far ahead a push may be scheduled, in seconds.
    public var maximumScheduleAhead = 30 * 86_400
    /// Most scheduled pushes waiting in the fleet.
    public var maximumScheduled = 100_000
    /// Seconds message status records are kept.
    public var statusRetention = 7 * 86_400
    /// Default and maximum credential lifetimes, in seconds.
    public var defaultCredentialTTL = 86_400
    public var maximumCredentialTTL = 365 * 86_400
    /// MQTT endpoints advertised in credential responses; empty means "the live push nodes".
    public var advertisedEndpoints: [String] = []
    /// Seconds a command stream entry may stay unacknowledged by a consumer before another
    /// control node claims it (the first is presumed dead).
    public var claimIdle = 30
    /// Seconds an HTTP connection may stay idle (or take to send a request head) before it is
    /// closed.
    public var httpIdleTimeout = 30
    /// When a push counts as accepted (202, XACK): once the Redis master has it (the default),
    /// or once a replica has it too (``Durability/replica``).
    public var durability = Durability.master
    /// How long a push waits for a replica under ``Durability/replica``, in milliseconds.
    public var replicaTimeout = 1_000
    /// Consume the Redis command stream.
    public var consumeCommandStream = true
    /// This control node's consumer name in the command stream group.
    public var consumerName: String

    public init(redis: RedisConfiguration, host: String, port: Int, secret: String, apiKey: String? = nil, consumerName: String) {
        self.redis = redis
        self.host = host
        self.port = port
        self.secret = secret
        self.apiKey = apiKey
        self.consumerName = consumerName
    }
}

extension ControlNodeConfiguration {
    /// Every key the API takes: `apiKey` with every scope, then `apiKeys`.
    var allAPIKeys: [APIKey] { (apiKey.map { [APIKey(key: $0)] } ?? []) + apiKeys }
}

/// When a push counts as accepted.
public enum Durability: String, Sendable, CaseIterable {
    /// Once the Redis master has stored it (and its AOF, with `appendfsync everysec`, has it on
    /// disk within a second).
    case master
    /// Once a replica has it too (`WAIT 1`): a master that crashes and is replaced by its
    /// replica loses no accepted push. A push the replica does not confirm in time is
    /// answered 503 `not_replicated` (a stream entry stays pending and is tried again).
    case replica
}

extension ControlNodeConfiguration: CustomStringConvertible, CustomDebugStringConvertible {
    /// Where the node listens and its Redis; never the secret or the API keys (a configuration
    /// printed by accident, in a log line, must not carry them).
    public var description: String { "ControlNodeConfiguration(listen: \(host):\(port), redis: \(redis.target))" }
    public var debugDescription: String { description }
}
