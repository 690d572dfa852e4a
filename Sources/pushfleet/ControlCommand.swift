import ArgumentParser
import ControlNode
import FleetCore
import Foundation
import Logging
import MQTTCodec
import NIOSSL
import PushNode
import RedisClient
import ServiceLifecycle

struct ControlCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "control",
        abstract: "Run a control node: HTTP API, credentials, fan-out, command stream consumer."
    )

    @OptionGroup var common: CommonOptions

    @Option(help: "HTTP listen address HOST:PORT (env PUSHFLEET_LISTEN; default 127.0.0.1:8080).")
    var listen: String?

    @Option(
        help: "Require 'Authorization: Bearer KEY' on every call but /healthz, /readyz, /metrics (env PUSHFLEET_API_KEY; default none).")
    var apiKey: String?

    @Option(
        help:
            "File of more API keys, one a line: KEY SCOPE[,SCOPE...] [REQUESTS_PER_SECOND], scopes push, credentials, read, admin (env PUSHFLEET_API_KEYS_FILE)."
    )
    var apiKeysFile: String?

    @Flag(
        help:
            "Allow --listen on an address other machines reach without --api-key: anyone who reaches it mints credentials and pushes (env PUSHFLEET_INSECURE=1)."
    )
    var insecure = false

    @Option(help: "Comma separated MQTT endpoints advertised with credentials (env PUSHFLEET_ENDPOINTS; default: the live push nodes).")
    var endpoints: String?

    @Option(help: "Consumer name in the command stream group (env PUSHFLEET_CONSUMER; default control-<host>-<pid>).")
    var consumer: String?

    @Option(help: "Seconds message status records are kept (env PUSHFLEET_STATUS_RETENTION; default 604800).")
    var statusRetention: Int?

    @Option(help: "Most stored messages per terminal; older ones are dropped and counted (env PUSHFLEET_QUEUE_CAP; default 1000).")
    var queueCap: Int?

    @Option(
        help:
            "Seconds before another control node claims a command stream entry left unacknowledged (env PUSHFLEET_CLAIM_IDLE; default 30).")
    var claimIdle: Int?

    @Option(
        help: ArgumentHelp(
            "When a push is accepted (202, XACK): 'master' once the Redis master stored it, 'replica' once a replica has it too (WAIT 1), so a master crash with failover loses no accepted push (env PUSHFLEET_DURABILITY; default master).",
            valueName: "master|replica"))
    var durability: String?

    @Option(
        help:
            "Milliseconds a push waits for a replica under --durability replica; past it 503 not_replicated (env PUSHFLEET_REPLICA_TIMEOUT; default 1000)."
    )
    var replicaTimeout: Int?

    @Option(
        help:
            "Most terminals the pushes of one API request address together; beyond it 413 (env PUSHFLEET_MAX_REQUEST_TARGETS; default 100000)."
    )
    var maxRequestTargets: Int?

    @Option(
        help:
            "Most bytes one API request may store, each stored push's payload times its targets; beyond it 413 (env PUSHFLEET_MAX_REQUEST_BYTES; default 67108864)."
    )
    var maxRequestBytes: Int?

    @Option(help: "Seconds an HTTP connection may stay idle or take to send a request head (env PUSHFLEET_HTTP_IDLE_TIMEOUT; default 30).")
    var httpIdleTimeout: Int?

    @Option(help: "Seconds ahead a push may be scheduled (sendAt, delay) (env PUSHFLEET_MAX_SCHEDULE_AHEAD; default 2592000).")
    var maxScheduleAhead: Int?

    @Option(help: "Most scheduled pushes waiting in the fleet; beyond it 503 (env PUSHFLEET_MAX_SCHEDULED; default 100000).")
    var maxScheduled: Int?

    @Option(
        help:
            "POST every status event (--status-events, on every node) to this http:// or https:// URL, in JSON batches, retried with backoff; any control node with it posts (env PUSHFLEET_STATUS_WEBHOOK; default none)."
    )
    var statusWebhook: String?

    @Option(
        help:
            "Signs each webhook request: PushFleet-Signature is v1= and the hex HMAC-SHA256 of '<PushFleet-Timestamp>.<body>' with this key; prefer the environment (env PUSHFLEET_STATUS_WEBHOOK_SECRET; default unsigned)."
    )
    var statusWebhookSecret: String?

    @Option(
        help:
            "PEM file of CA certificates to trust, besides the system's, for an https:// --status-webhook (env PUSHFLEET_STATUS_WEBHOOK_CA; default the system's only)."
    )
    var statusWebhookCa: String?

    @Option(
        help:
            "Stream entries posted in one webhook request, each the events of one status write, at most 100 (env PUSHFLEET_STATUS_WEBHOOK_BATCH; default 20, at most 100)."
    )
    var statusWebhookBatch: Int?

    @Option(
        help: "Seconds one webhook request may take, under --claim-idle (env PUSHFLEET_STATUS_WEBHOOK_TIMEOUT; default 10).")
    var statusWebhookTimeout: Int?

    @Option(
        help:
            "Seconds an event is tried for before it is dropped (counted and logged) while the webhook refuses or is down (env PUSHFLEET_STATUS_WEBHOOK_MAX_AGE; default 3600)."
    )
    var statusWebhookMaxAge: Int?

    @Option(
        help:
            "Webhook requests one control node has in flight at once, each posting entries of its own (env PUSHFLEET_STATUS_WEBHOOK_CONCURRENCY; default 4, at most 64)."
    )
    var statusWebhookConcurrency: Int?

    func run() async throws {
        Bootstrap.logging(level: try common.level(), format: try common.format())
        let metrics = Bootstrap.metrics()
        let logger = Logger(label: "pushfleet.control")
        let configuration = try makeConfiguration()
        let node = ControlNode(configuration: configuration, logger: logger, metrics: metrics)
        logger.info(
            "control node starting",
            metadata: ["listen": "\(configuration.host):\(configuration.port)", "redis": "\(configuration.redis.target)"])
        let group = ServiceGroup(services: [node], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }

    func makeConfiguration() throws -> ControlNodeConfiguration {
        let (host, port) = try parseHostPort(listen ?? env("LISTEN") ?? "127.0.0.1:8080", option: "--listen")
        let name = consumer ?? env("CONSUMER") ?? "control-\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
        let key = apiKey ?? env("API_KEY")
        var keys: [APIKey] = []
        if let path = apiKeysFile ?? env("API_KEYS_FILE") {
            guard let contents = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ValidationError("cannot read --api-keys-file \(path)")
            }
            do { keys = try APIKey.parse(file: contents) } catch { throw ValidationError("\(error)") }
        }
        let open = insecure || ["1", "true", "yes"].contains(env("INSECURE")?.lowercased() ?? "")
        guard key != nil || !keys.isEmpty || isLoopback(host) || open else {
            throw ValidationError("--listen \(host) is reachable from other machines: give --api-key (or --insecure to serve the API open)")
        }
        var configuration = ControlNodeConfiguration(
            redis: try common.redisConfiguration(),
            host: host,
            port: port,
            secret: try common.requiredSecret(),
            apiKey: key,
            consumerName: name
        )
        configuration.apiKeys = keys
        configuration.keys = FleetKeys(prefix: common.prefix)
        configuration.statusEvents = try common.statusEventsLength()
        if let endpoints = endpoints ?? env("ENDPOINTS") {
            configuration.advertisedEndpoints = endpoints.split(separator: ",").map(String.init)
        }
        configuration.statusRetention =
            try positive(statusRetention, env: "STATUS_RETENTION", option: "--status-retention") ?? configuration.statusRetention
        configuration.offlineQueueCap = try positive(queueCap, env: "QUEUE_CAP", option: "--queue-cap") ?? configuration.offlineQueueCap
        configuration.claimIdle = try positive(claimIdle, env: "CLAIM_IDLE", option: "--claim-idle") ?? configuration.claimIdle
        if let durability = durability ?? env("DURABILITY") {
            guard let value = Durability(rawValue: durability) else { throw ValidationError("--durability must be master or replica") }
            configuration.durability = value
        }
        configuration.replicaTimeout =
            try positive(replicaTimeout, env: "REPLICA_TIMEOUT", option: "--replica-timeout") ?? configuration.replicaTimeout
        configuration.httpIdleTimeout =
            try positive(httpIdleTimeout, env: "HTTP_IDLE_TIMEOUT", option: "--http-idle-timeout") ?? configuration.httpIdleTimeout
        configuration.maximumRequestTargets =
            try positive(maxRequestTargets, env: "MAX_REQUEST_TARGETS", option: "--max-request-targets")
            ?? configuration.maximumRequestTargets
        configuration.maximumRequestBytes =
            try positive(maxRequestBytes, env: "MAX_REQUEST_BYTES", option: "--max-request-bytes") ?? configuration.maximumRequestBytes
        configuration.maximumScheduleAhead =
            try positive(maxScheduleAhead, env: "MAX_SCHEDULE_AHEAD", option: "--max-schedule-ahead") ?? configuration.maximumScheduleAhead
        configuration.maximumScheduled =
            try positive(maxScheduled, env: "MAX_SCHEDULED", option: "--max-scheduled") ?? configuration.maximumScheduled
        configuration.statusWebhook = try makeWebhook(configuration: configuration)
        return configuration
    }

    /// The status webhook's settings, or nil when none is configured.
    func makeWebhook(configuration: ControlNodeConfiguration) throws -> StatusWebhookConfiguration? {
        guard let url = statusWebhook ?? env("STATUS_WEBHOOK") else { return nil }
        if let problem = StatusWebhookConfiguration.problem(with: url) { throw ValidationError("--status-webhook \(url): \(problem)") }
        guard configuration.statusEvents > 0 else {
            throw ValidationError("--status-webhook posts the status event stream: give --status-events (to every node) too")
        }
        var webhook = StatusWebhookConfiguration(url: url, secret: statusWebhookSecret ?? env("STATUS_WEBHOOK_SECRET"))
        if let path = statusWebhookCa ?? env("STATUS_WEBHOOK_CA") {
            guard (try? NIOSSLCertificate.fromPEMFile(path))?.isEmpty == false else {
                throw ValidationError("--status-webhook-ca \(path): no PEM certificate could be read from it")
            }
            webhook.caFile = path
        }
        webhook.batchSize =
            try positive(statusWebhookBatch, env: "STATUS_WEBHOOK_BATCH", option: "--status-webhook-batch") ?? webhook.batchSize
        guard webhook.batchSize <= 100 else { throw ValidationError("--status-webhook-batch must be at most 100") }
        webhook.timeout =
            try positive(statusWebhookTimeout, env: "STATUS_WEBHOOK_TIMEOUT", option: "--status-webhook-timeout") ?? webhook.timeout
        guard webhook.timeout < configuration.claimIdle else {
            throw ValidationError("--status-webhook-timeout must be under --claim-idle (\(configuration.claimIdle) s)")
        }
        webhook.concurrency =
            try positive(statusWebhookConcurrency, env: "STATUS_WEBHOOK_CONCURRENCY", option: "--status-webhook-concurrency")
            ?? webhook.concurrency
        guard webhook.concurrency <= 64 else { throw ValidationError("--status-webhook-concurrency must be at most 64") }
        webhook.maximumAge =
            try positive(statusWebhookMaxAge, env: "STATUS_WEBHOOK_MAX_AGE", option: "--status-webhook-max-age") ?? webhook.maximumAge
        return webhook
    }
}

/// An integer option from the flag or `PUSHFLEET_<env>`, which must be positive.
func positive(_ flag: Int?, env name: String, option: String) throws -> Int? {
    guard let value = flag ?? env(name).flatMap({ Int($0) }) else { return nil }
    guard value > 0 else { throw ValidationError("\(option) must be positive") }
    return value
}
