import ArgumentParser
import CHeapInfo
import FleetCore
import Foundation
import Logging
import Metrics
import NIOPosix
import Prometheus
import RedisClient

@main
struct PushFleetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pushfleet",
        abstract: "PushFleet: MQTT push to millions of terminals, through Redis.",
        discussion:
            "Every option can also be given in the environment as PUSHFLEET_<OPTION> (--redis -> PUSHFLEET_REDIS, --node-id -> PUSHFLEET_NODE_ID); a flag wins over the environment.",
        subcommands: [
            DevCommand.self, ControlCommand.self, NodeCommand.self, PushClientCommand.self, CredentialCommand.self, StatusCommand.self,
            BenchCommand.self,
        ]
    )
}

/// Options every server command shares.
struct CommonOptions: ParsableArguments {
    @Option(
        help: """
            Redis URL, redis://[[user]:password@]host[:port][/db]: one server, or any node of a Redis Cluster (detected \
            from the server: commands then go to each slot's master; more nodes, comma-separated, are tried in turn) \
            (env PUSHFLEET_REDIS; default redis://127.0.0.1:6379).
            """)
    var redis: String?

    @Option(help: "Shared secret that signs terminal credentials, 16 bytes or more (env PUSHFLEET_SECRET; required).")
    var secret: String?

    @Option(help: "Prefix of every Redis key and channel (env PUSHFLEET_KEY_PREFIX; default pushfleet:).")
    var keyPrefix: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (env PUSHFLEET_LOG_LEVEL; default info).")
    var logLevel: String?

    @Option(help: "Log lines as json (one object a line), logfmt (key=value) or text (env PUSHFLEET_LOG_FORMAT; default text).")
    var logFormat: String?

    @Option(
        help:
            "Append every delivery state change (delivered, acknowledged, expired, dropped, replaced, withdrawn) to the stream <prefix>events, an entry per status write holding its events (up to 100), kept to about this many entries; give every node the same (env PUSHFLEET_STATUS_EVENTS; default 0: off)."
    )
    var statusEvents: Int?

    @Option(
        help:
            "Find the Redis master through Sentinel, HOST:PORT[,HOST:PORT...], and follow its failovers; --redis then gives only the password and database (env PUSHFLEET_SENTINEL; default off)."
    )
    var sentinel: String?

    @Option(help: "The master's name in Sentinel (env PUSHFLEET_SENTINEL_MASTER; default mymaster).")
    var sentinelMaster: String?

    @Option(
        help:
            "Password of Sentinels that require one (requirepass in sentinel.conf); prefer the environment (env PUSHFLEET_SENTINEL_PASSWORD)."
    )
    var sentinelPassword: String?

    var redisURL: String { redis ?? env("REDIS") ?? "redis://127.0.0.1:6379" }

    /// Where Redis is: `--redis`, and `--sentinel` if given.
    func redisConfiguration() throws -> RedisConfiguration {
        var configuration = try RedisConfiguration(urls: redisURL)
        if let list = sentinel ?? env("SENTINEL") {
            configuration.sentinel = try RedisConfiguration.Sentinel(
                list: list, masterName: sentinelMaster ?? env("SENTINEL_MASTER") ?? "mymaster",
                password: sentinelPassword ?? env("SENTINEL_PASSWORD"))
        }
        return configuration
    }
    var prefix: String { keyPrefix ?? env("KEY_PREFIX") ?? "pushfleet:" }

    /// The status event stream's length, 0 for none.
    func statusEventsLength() throws -> Int {
        guard let value = statusEvents ?? env("STATUS_EVENTS").flatMap({ Int($0) }) else { return 0 }
        guard value >= 0 else { throw ValidationError("--status-events must be 0 (off) or more") }
        return value
    }

    func requiredSecret() throws -> String {
        guard let secret = secret ?? env("SECRET"), !secret.isEmpty else {
            throw ValidationError("missing --secret (or PUSHFLEET_SECRET): the credential secret shared by control and push nodes")
        }
        try validateSecret(secret)
        return secret
    }

    func level() throws -> Logger.Level {
        let text = logLevel ?? env("LOG_LEVEL") ?? "info"
        guard let level = Logger.Level(rawValue: text) else { throw ValidationError("unknown log level \(text)") }
        return level
    }

    func format() throws -> LogFormat {
        try parseLogFormat(logFormat ?? env("LOG_FORMAT"))
    }
}

/// `--log-format`'s value (text when absent).
func parseLogFormat(_ text: String?) throws -> LogFormat {
    guard let text else { return .text }
    guard let format = LogFormat(rawValue: text) else {
        throw ValidationError("unknown log format \(text): json, logfmt or text")
    }
    return format
}

/// `PUSHFLEET_<name>` from the environment.
func env(_ name: String) -> String? {
    ProcessInfo.processInfo.environment["PUSHFLEET_" + name].flatMap { $0.isEmpty ? nil : $0 }
}

/// Splits `host:port`.
func parseHostPort(_ text: String, option: String) throws -> (String, Int) {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
        throw ValidationError("\(option) must be HOST:PORT, got \(text)")
    }
    let host = String(text[..<colon])
    return (host.isEmpty ? "0.0.0.0" : host, port)
}

/// Process-wide logging and metrics, set up once.
enum Bootstrap {
    nonisolated(unsafe) private static var registry: PrometheusCollectorRegistry?

    static func logging(level: Logger.Level, format: LogFormat = .text) {
        LoggingSystem.bootstrap { label in
            guard format != .text else {
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            var handler = FleetLogHandler(label: label, format: format)
            handler.logLevel = level
            return handler
        }
    }

    /// Installs the Prometheus metrics backend; returns a renderer of the text format.
    /// The Prometheus registry every metric goes to, and how `/metrics` renders it. Each
    /// rendering first reads the heap (glibc `mallinfo2`, 0 elsewhere): bytes in use by live objects and
    /// bytes free but kept, which RSS alone cannot tell apart. Durations (Redis requests,
    /// event loop lag) go into histograms from 100 us to 10 s. The event loops' lag is watched
    /// from here on.
    static func metrics() -> @Sendable () -> [UInt8] {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500), .milliseconds(5),
            .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
        RedisMetrics.register()
        EventLoopLag.watch(MultiThreadedEventLoopGroup.singleton)
        let inUse = Gauge(label: "pushfleet_heap_in_use_bytes")
        let free = Gauge(label: "pushfleet_heap_free_bytes")
        return {
            inUse.record(Int(pushfleet_heap_in_use()))
            free.record(Int(pushfleet_heap_free()))
            return registry.emitToBuffer()
        }
    }
}

/// Minimum length of the credential secret: anyone who guesses it mints credentials for every
/// terminal.
let minimumSecretBytes = 16

func validateSecret(_ secret: String) throws {
    guard secret.utf8.count >= minimumSecretBytes else {
        throw ValidationError("the secret must be \(minimumSecretBytes) bytes or more (it signs every terminal's credentials)")
    }
}

/// Whether `host` is a loopback address (reachable from this machine only).
func isLoopback(_ host: String) -> Bool {
    host == "localhost" || host == "::1" || host.hasPrefix("127.")
}
