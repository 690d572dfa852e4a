import FleetCore
import MQTTCodec
import NIOCore
import RedisClient

/// Everything a push node needs to run.
///
/// `secret` must be the control nodes' credential secret: push nodes verify credentials with
/// it locally. `allowAnonymous` admits any client id without a credential and opens the topic
/// ACL; it is meant for development and conformance testing only.
public struct PushNodeConfiguration: Sendable {
    /// Redis connection settings.
    public var redis: RedisConfiguration
    /// Address the MQTT listener binds.
    public var mqttHost: String
    public var mqttPort: Int
    /// More listeners: MQTT over TLS, WebSocket, WebSocket over TLS.
    public var listeners: [MQTTListener] = []
    /// PEM files of the certificate chain and private key for TLS listeners.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?
    /// This node's id: unique in the fleet; names its Redis channel and liveness key.
    public var nodeID: String
    /// The shared credential secret.
    public var secret: String
    /// Admit clients without credentials.
    public var allowAnonymous: Bool = false
    /// Key prefix of every Redis key.
    public var keys = FleetKeys()
    /// Every delivery state change is appended to ``FleetKeys/statusEvents``, kept to about
    /// this many entries; 0: off.
    public var statusEvents = 0
    /// Largest MQTT packet accepted from a terminal, in bytes.
    public var maximumPacketSize: Int = 256 * 1024
    /// Unacknowledged QoS 1 messages per connection; stored messages beyond it wait in Redis.
    public var inflightWindow: Int = 32
    /// Session registrations per second this node starts at most (0: no limit); CONNECTs
    /// beyond it wait, up to 10 s, then are refused.
    public var maximumConnectRate: Int = 20_000
    /// Seconds a node's liveness key lives without a refresh: after a crash its terminals
    /// count as offline within this time.
    public var livenessTTL: Int = 10
    /// Longest keep alive an MQTT 5 client gets, in seconds (0: the client's own). A client
    /// asking for none or for more is told this one (CONNACK server keep alive).
    public var maximumKeepAlive: Int = 0
    /// Seconds a connection may take to send CONNECT (TLS handshake and WebSocket upgrade
    /// included).
    public var connectTimeout: Int = 10
    /// Every MQTT connection starts with a PROXY protocol header (version 1 or 2) from the load
    /// balancer, naming the terminal's address; one that does not is closed.
    public var proxyProtocol = false
    /// Connections the node holds at most; beyond it a CONNECT gets CONNACK 0x03 (3.1.1) /
    /// 0x89 server busy (5.0), and a WebSocket connection is closed.
    public var maximumConnections: Int = 200_000
    /// Seconds an HTTP connection to the admin port may stay idle (or take to send a request
    /// head) before it is closed.
    public var httpIdleTimeout: Int = 30
    /// Connections closed per second when the node shuts down, so terminals do not all
    /// reconnect elsewhere at once.
    public var drainRate: Int = 2_000
    /// Seconds a closing connection waits for its in-flight messages to be acknowledged.
    public var drainTimeout: Int = 5
    /// Topic filters any authenticated terminal may subscribe to besides `push/<its id>` and
    /// `broadcast` (`%c` stands for the terminal id).
    public var publicTopicFilters: [String] = []
    /// Topic filters terminals may publish to (`%c` stands for the terminal id); none by default.
    public var publishTopicFilters: [String] = []
    /// Longest a persistent session is kept after its connection ends, in seconds: MQTT 5
    /// session expiry intervals are capped to it, and MQTT 3.1.1 clean-session-off sessions
    /// use it.
    public var maximumSessionExpiry: Int = 7 * 24 * 3600
    /// Entries a terminal's stored list keeps at most (oldest dropped first), for messages
    /// stored for persistent sessions' subscriptions.
    public var offlineQueueCap: Int = 1_000
    /// QoS 1 and 2 PUBLISHes a terminal may have unacknowledged towards the node (MQTT 5
    /// receive maximum; exceeding it gets DISCONNECT 0x93).
    public var receiveMaximum: Int = 64
    /// Topic aliases a terminal may use towards the node (MQTT 5), and the node uses towards it
    /// at most.
    public var topicAliasMaximum: Int = 32
    /// Subscriptions one session may hold, besides `push/<id>` and `broadcast` (MQTT 5: SUBACK
    /// 0x97 quota exceeded beyond it; 3.1.1: 0x80).
    public var maximumSubscriptions: Int = 100
    /// Levels a topic name or filter from a terminal may have (SUBSCRIBE, PUBLISH, will).
    public var maximumTopicLevels: Int = MQTTTopic.defaultMaximumLevels

    /// Delayed wills waiting in Redis across the fleet, checked by the node keeping one; a will
    /// beyond it is published without its delay.
    public var maximumDelayedWills: Int = 100_000

    /// Largest payload of a retained message a terminal sets (a PUBLISH or a will with RETAIN),
    /// in bytes; beyond it the PUBLISH is refused (MQTT 5: 0x97) and the CONNECT carrying
    /// such a will too.
    public var maximumRetainedSize: Int = 65_536
    /// Retained messages the fleet holds at most, checked when a terminal sets a new one;
    /// beyond it the PUBLISH is refused (MQTT 5: 0x97).
    public var maximumRetainedMessages: Int = 100_000
    /// Bytes of retained messages (as stored) the fleet holds at most, checked likewise.
    public var maximumRetainedBytes: Int = 256 * 1024 * 1024
    /// Bytes of MQTT 5 user properties (names and values) one CONNECT, will or PUBLISH may
    /// carry; beyond it the CONNECT gets CONNACK 0x95 and the PUBLISH is refused (0x83).
    public var maximumUserPropertyBytes: Int = 8_192
    /// How long a `sent` record waits for its message's acknowledgement before it is written
    /// (``SentRecorder``: one to two of these): longer than a mobile network's round trip, so
    /// that a record is written (HSET, and HDEL on the acknowledgement) only for a terminal slow
    /// to acknowledge, or when the connection stops; a node that dies loses the records of its
    /// last second. Tuning for tests, not a flag.
    var sentRecordInterval: TimeAmount = .milliseconds(500)

    public init(redis: RedisConfiguration, mqttHost: String, mqttPort: Int, nodeID: String, secret: String) {
        self.redis = redis
        self.mqttHost = mqttHost
        self.mqttPort = mqttPort
        self.nodeID = nodeID
        self.secret = secret
    }
}

extension PushNodeConfiguration: CustomStringConvertible, CustomDebugStringConvertible {
    /// The node id and its Redis; never the secret (a configuration printed by accident, in a
    /// log line, must not carry it).
    public var description: String { "PushNodeConfiguration(node: \(nodeID), redis: \(redis.target))" }
    public var debugDescription: String { description }
}
