import ArgumentParser
import ControlNode
import FleetCore
import Foundation
import Logging
import MQTTCodec
import PushNode
import RedisClient
import ServiceLifecycle

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run a push node: holds MQTT connections, delivers pushes and routes what terminals publish."
    )

    @OptionGroup var common: CommonOptions

    @Option(help: "MQTT listen address HOST:PORT (env PUSHFLEET_MQTT; default 0.0.0.0:1883).")
    var mqtt: String?

    @Option(help: "Unique id of this node in the fleet (env PUSHFLEET_NODE_ID; default node-<host>-<pid>).")
    var nodeId: String?

    @Option(help: "Admin HTTP address HOST:PORT for /healthz, /readyz, /metrics (env PUSHFLEET_ADMIN; default off).")
    var admin: String?

    @Option(help: "MQTT over WebSocket listener HOST:PORT, path /mqtt, subprotocol mqtt (env PUSHFLEET_WS; default off).")
    var ws: String?

    @Option(help: "MQTT over TLS listener HOST:PORT; needs --tls-cert and --tls-key (env PUSHFLEET_TLS; default off).")
    var tls: String?

    @Option(help: "MQTT over WebSocket over TLS listener HOST:PORT, path /mqtt (env PUSHFLEET_WSS; default off).")
    var wss: String?

    @Option(help: "PEM certificate chain for the TLS listeners (env PUSHFLEET_TLS_CERT).")
    var tlsCert: String?

    @Option(help: "PEM private key for the TLS listeners (env PUSHFLEET_TLS_KEY).")
    var tlsKey: String?

    @Flag(
        help:
            "Admit clients without a credential and open the topic ACL; development and conformance only (env PUSHFLEET_ALLOW_ANONYMOUS=1)."
    )
    var allowAnonymous = false

    @Flag(
        help:
            "Every MQTT connection starts with a PROXY protocol header (v1 or v2: HAProxy send-proxy, send-proxy-v2) naming the terminal's address; connections without one are closed. Only for nodes the load balancer alone reaches (env PUSHFLEET_PROXY_PROTOCOL=1)."
    )
    var proxyProtocol = false

    @Option(help: "Largest MQTT packet accepted, in bytes (env PUSHFLEET_MAX_PACKET_SIZE; default 262144).")
    var maxPacketSize: Int?

    @Option(help: "Unacknowledged QoS 1 messages per connection (env PUSHFLEET_INFLIGHT; default 32).")
    var inflight: Int?

    @Option(
        help:
            "Comma separated topic filters any terminal may subscribe to besides push/<id> and broadcast; %c stands for the terminal id (env PUSHFLEET_PUBLIC_TOPICS)."
    )
    var publicTopics: String?

    @Option(
        help:
            "Comma separated topic filters terminals may publish to, routed to every matching subscriber in the fleet; %c stands for the terminal id; default none (env PUSHFLEET_PUBLISH_TOPICS)."
    )
    var publishTopics: String?

    @Option(
        help:
            "Longest a persistent session outlives its connection, in seconds: caps MQTT 5 session expiry, and is the expiry of MQTT 3.1.1 clean-session-off sessions (env PUSHFLEET_SESSION_EXPIRY_MAX; default 604800)."
    )
    var sessionExpiryMax: Int?

    @Option(
        help:
            "Messages kept per terminal for persistent sessions' subscriptions, oldest dropped first (env PUSHFLEET_QUEUE_CAP; default 1000)."
    )
    var queueCap: Int?

    @Option(help: "Unacknowledged QoS 1/2 PUBLISHes a client may send (MQTT 5 receive maximum) (env PUSHFLEET_RECEIVE_MAX; default 64).")
    var receiveMax: Int?

    @Option(
        help:
            "Topic aliases a client may use, and the node uses towards it at most (MQTT 5); 0 turns them off (env PUSHFLEET_TOPIC_ALIAS_MAX; default 32)."
    )
    var topicAliasMax: Int?

    @Option(
        help:
            "Subscriptions per session besides push/<id> and broadcast; beyond it SUBACK 0x97 (MQTT 5) or 0x80 (env PUSHFLEET_MAX_SUBSCRIPTIONS; default 100)."
    )
    var maxSubscriptions: Int?

    @Option(
        help:
            "Delayed wills (MQTT 5 will delay) waiting in Redis across the fleet; beyond it a will is published without its delay (env PUSHFLEET_MAX_DELAYED_WILLS; default 100000)."
    )
    var maxDelayedWills: Int?

    @Option(
        help:
            "Largest payload, in bytes, of a retained message a terminal sets (PUBLISH or will); beyond it PUBACK 0x97 / CONNACK 0x97 (env PUSHFLEET_MAX_RETAINED_SIZE; default 65536)."
    )
    var maxRetainedSize: Int?

    @Option(
        help:
            "Retained messages the fleet holds; a terminal setting one more gets PUBACK 0x97 (env PUSHFLEET_MAX_RETAINED; default 100000)."
    )
    var maxRetained: Int?

    @Option(
        help:
            "Bytes of retained messages the fleet holds; a terminal's retained publish beyond it gets PUBACK 0x97 (env PUSHFLEET_MAX_RETAINED_BYTES; default 268435456)."
    )
    var maxRetainedBytes: Int?

    @Option(
        help:
            "Bytes of MQTT 5 user properties one CONNECT (with its will) or PUBLISH may carry; beyond it CONNACK 0x95 / PUBACK 0x83 (env PUSHFLEET_MAX_USER_PROPERTY_BYTES; default 8192)."
    )
    var maxUserPropertyBytes: Int?

    @Option(
        help: "Levels a topic name or filter from a terminal may have (env PUSHFLEET_MAX_TOPIC_LEVELS; default 128)."
    )
    var maxTopicLevels: Int?

    @Option(
        help:
            "Connections held at most; beyond it CONNACK 0x03 / 0x89 server busy, WebSocket ones closed (env PUSHFLEET_MAX_CONNECTIONS; default 200000)."
    )
    var maxConnections: Int?

    @Option(
        help:
            "Seconds a connection may take to send CONNECT, TLS handshake and WebSocket upgrade included (env PUSHFLEET_CONNECT_TIMEOUT; default 10)."
    )
    var connectTimeout: Int?

    @Option(help: "Seconds an admin-port HTTP connection may stay idle (env PUSHFLEET_HTTP_IDLE_TIMEOUT; default 30).")
    var httpIdleTimeout: Int?

    @Option(
        help:
            "Longest keep alive, in seconds, an MQTT 5 client gets: one asking for none or more is told this one; 0 = the client's own (env PUSHFLEET_MAX_KEEPALIVE; default 0)."
    )
    var maxKeepalive: Int?

    @Option(
        help:
            "Session registrations per second at most; more CONNECTs wait up to 10 s, then are refused; 0 = no limit (env PUSHFLEET_MAX_CONNECT_RATE; default 20000)."
    )
    var maxConnectRate: Int?

    @Option(
        help:
            "Seconds the node's liveness key lives without a refresh; after a crash its terminals count as offline within it (env PUSHFLEET_LIVENESS_TTL; default 10)."
    )
    var livenessTtl: Int?

    @Option(help: "Connections closed per second on shutdown (env PUSHFLEET_DRAIN_RATE; default 2000).")
    var drainRate: Int?

    @Option(help: "Seconds a closing connection waits for in-flight acknowledgements on shutdown (env PUSHFLEET_DRAIN_TIMEOUT; default 5).")
    var drainTimeout: Int?

    func run() async throws {
        Bootstrap.logging(level: try common.level(), format: try common.format())
        let metrics = Bootstrap.metrics()
        let logger = Logger(label: "pushfleet.node")
        let configuration = try makeConfiguration()
        let node = PushNode(configuration: configuration, logger: logger)
        var services: [any Service] = [node]
        if let admin = admin ?? env("ADMIN") {
            let (host, port) = try parseHostPort(admin, option: "--admin")
            services.append(node.makeAdminApplication(host: host, port: port, metrics: metrics, logger: logger))
        }
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }

    func makeConfiguration() throws -> PushNodeConfiguration {
        let (host, port) = try parseHostPort(mqtt ?? env("MQTT") ?? "0.0.0.0:1883", option: "--mqtt")
        let id = nodeId ?? env("NODE_ID") ?? "node-\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
        guard TerminalID.isValid(id) else { throw ValidationError("--node-id must be 1-128 of A-Z a-z 0-9 _ - . : @") }
        var configuration = PushNodeConfiguration(
            redis: try common.redisConfiguration(),
            mqttHost: host,
            mqttPort: port,
            nodeID: id,
            secret: try common.requiredSecret()
        )
        configuration.keys = FleetKeys(prefix: common.prefix)
        configuration.statusEvents = try common.statusEventsLength()
        for (transport, flag, name) in [(MQTTListener.Transport.webSocket, ws, "WS"), (.tls, tls, "TLS"), (.secureWebSocket, wss, "WSS")] {
            guard let address = flag ?? env(name) else { continue }
            let (listenHost, listenPort) = try parseHostPort(address, option: "--\(name.lowercased())")
            configuration.listeners.append(MQTTListener(transport, host: listenHost, port: listenPort))
        }
        configuration.tlsCertificatePath = tlsCert ?? env("TLS_CERT")
        configuration.tlsKeyPath = tlsKey ?? env("TLS_KEY")
        if configuration.listeners.contains(where: { $0.transport == .tls || $0.transport == .secureWebSocket }),
            configuration.tlsCertificatePath == nil || configuration.tlsKeyPath == nil
        {
            throw ValidationError("--tls and --wss need --tls-cert and --tls-key")
        }
        configuration.allowAnonymous = allowAnonymous || ["1", "true", "yes"].contains(env("ALLOW_ANONYMOUS")?.lowercased() ?? "")
        configuration.proxyProtocol = proxyProtocol || ["1", "true", "yes"].contains(env("PROXY_PROTOCOL")?.lowercased() ?? "")
        if let size = maxPacketSize ?? env("MAX_PACKET_SIZE").flatMap({ Int($0) }) { configuration.maximumPacketSize = size }
        if let inflight = inflight ?? env("INFLIGHT").flatMap({ Int($0) }) {
            guard inflight > 0, inflight < 65_535 else { throw ValidationError("--inflight must be 1...65534") }
            configuration.inflightWindow = inflight
        }
        if let topics = publicTopics ?? env("PUBLIC_TOPICS") {
            configuration.publicTopicFilters = topics.split(separator: ",").map(String.init)
        }
        if let topics = publishTopics ?? env("PUBLISH_TOPICS") {
            configuration.publishTopicFilters = topics.split(separator: ",").map(String.init)
        }
        for filter in configuration.publicTopicFilters + configuration.publishTopicFilters where !MQTTTopic.isValidFilter(filter) {
            throw ValidationError("'\(filter)' is not a valid MQTT topic filter")
        }
        configuration.maximumSessionExpiry =
            try positive(sessionExpiryMax, env: "SESSION_EXPIRY_MAX", option: "--session-expiry-max") ?? configuration.maximumSessionExpiry
        configuration.offlineQueueCap = try positive(queueCap, env: "QUEUE_CAP", option: "--queue-cap") ?? configuration.offlineQueueCap
        if let value = try positive(receiveMax, env: "RECEIVE_MAX", option: "--receive-max") {
            guard value <= 65_535 else { throw ValidationError("--receive-max must be 1...65535") }
            configuration.receiveMaximum = value
        }
        if let value = maxKeepalive ?? env("MAX_KEEPALIVE").flatMap({ Int($0) }) {
            guard (0...65_535).contains(value) else { throw ValidationError("--max-keepalive must be 0...65535") }
            configuration.maximumKeepAlive = value
        }
        if let value = topicAliasMax ?? env("TOPIC_ALIAS_MAX").flatMap({ Int($0) }) {
            guard (0...65_535).contains(value) else { throw ValidationError("--topic-alias-max must be 0...65535") }
            configuration.topicAliasMaximum = value
        }
        configuration.maximumSubscriptions =
            try positive(maxSubscriptions, env: "MAX_SUBSCRIPTIONS", option: "--max-subscriptions") ?? configuration.maximumSubscriptions
        configuration.maximumDelayedWills =
            try positive(maxDelayedWills, env: "MAX_DELAYED_WILLS", option: "--max-delayed-wills") ?? configuration.maximumDelayedWills
        configuration.maximumRetainedSize =
            try positive(maxRetainedSize, env: "MAX_RETAINED_SIZE", option: "--max-retained-size") ?? configuration.maximumRetainedSize
        configuration.maximumRetainedMessages =
            try positive(maxRetained, env: "MAX_RETAINED", option: "--max-retained") ?? configuration.maximumRetainedMessages
        configuration.maximumRetainedBytes =
            try positive(maxRetainedBytes, env: "MAX_RETAINED_BYTES", option: "--max-retained-bytes") ?? configuration.maximumRetainedBytes
        configuration.maximumUserPropertyBytes =
            try positive(maxUserPropertyBytes, env: "MAX_USER_PROPERTY_BYTES", option: "--max-user-property-bytes")
            ?? configuration.maximumUserPropertyBytes
        configuration.maximumConnections =
            try positive(maxConnections, env: "MAX_CONNECTIONS", option: "--max-connections") ?? configuration.maximumConnections
        configuration.connectTimeout =
            try positive(connectTimeout, env: "CONNECT_TIMEOUT", option: "--connect-timeout") ?? configuration.connectTimeout
        configuration.httpIdleTimeout =
            try positive(httpIdleTimeout, env: "HTTP_IDLE_TIMEOUT", option: "--http-idle-timeout") ?? configuration.httpIdleTimeout
        configuration.maximumTopicLevels =
            try positive(maxTopicLevels, env: "MAX_TOPIC_LEVELS", option: "--max-topic-levels") ?? configuration.maximumTopicLevels
        if let rate = maxConnectRate ?? env("MAX_CONNECT_RATE").flatMap({ Int($0) }) {
            guard rate >= 0 else { throw ValidationError("--max-connect-rate must be 0 or more") }
            configuration.maximumConnectRate = rate
        }
        configuration.livenessTTL = try positive(livenessTtl, env: "LIVENESS_TTL", option: "--liveness-ttl") ?? configuration.livenessTTL
        configuration.drainRate = try positive(drainRate, env: "DRAIN_RATE", option: "--drain-rate") ?? configuration.drainRate
        configuration.drainTimeout =
            try positive(drainTimeout, env: "DRAIN_TIMEOUT", option: "--drain-timeout") ?? configuration.drainTimeout
        return configuration
    }
}
