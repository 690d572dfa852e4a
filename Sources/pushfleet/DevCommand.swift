import ArgumentParser
import ControlNode
import FleetCore
import Foundation
import LocalRedis
import Logging
import PushNode
import RedisClient
import ServiceLifecycle

struct DevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Run the whole system on this machine: a private redis-server, one control node, two push nodes.",
        discussion: "redis-server must be on PATH (scripts/dev installs it). Ctrl-C stops everything."
    )

    @Option(help: "Control API address (env PUSHFLEET_LISTEN; default 127.0.0.1:8080).")
    var listen: String?

    @Option(help: "MQTT ports of the two push nodes, comma separated (env PUSHFLEET_MQTT_PORTS; default 1883,1884).")
    var mqttPorts: String?

    @Option(help: "Credential secret (env PUSHFLEET_SECRET; default: a random one).")
    var secret: String?

    @Option(help: "Log level (env PUSHFLEET_LOG_LEVEL; default info).")
    var logLevel: String?

    @Option(help: "Log lines as json, logfmt or text (env PUSHFLEET_LOG_FORMAT; default text).")
    var logFormat: String?

    func run() async throws {
        Bootstrap.logging(
            level: Logger.Level(rawValue: logLevel ?? env("LOG_LEVEL") ?? "info") ?? .info,
            format: try parseLogFormat(logFormat ?? env("LOG_FORMAT")))
        let metrics = Bootstrap.metrics()
        let logger = Logger(label: "pushfleet.dev")
        let (host, port) = try parseHostPort(listen ?? env("LISTEN") ?? "127.0.0.1:8080", option: "--listen")
        let ports = (mqttPorts ?? env("MQTT_PORTS") ?? "1883,1884").split(separator: ",").compactMap { Int($0) }
        guard ports.count == 2 else { throw ValidationError("--mqtt-ports needs two ports") }
        let secret = self.secret ?? env("SECRET") ?? FleetClock.newEpoch() + FleetClock.newEpoch()
        try validateSecret(secret)

        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pushfleet-dev-\(getpid())").path
        let redis = try LocalRedisServer(port: LocalRedisServer.ephemeralPort(), directory: directory, appendOnly: true)
        defer { redis.stop() }
        let redisConfiguration = RedisConfiguration(host: "127.0.0.1", port: redis.port)

        var control = ControlNodeConfiguration(
            redis: redisConfiguration, host: host, port: port, secret: secret, consumerName: "dev-control")
        control.advertisedEndpoints = ports.map { "mqtt://127.0.0.1:\($0)" }
        var services: [any Service] = [ControlNode(configuration: control, logger: logger, metrics: metrics)]
        for (index, mqttPort) in ports.enumerated() {
            var configuration = PushNodeConfiguration(
                redis: redisConfiguration, mqttHost: "127.0.0.1", mqttPort: mqttPort, nodeID: "dev-\(index + 1)", secret: secret)
            // Terminals may talk to each other on chat/<room>, across the two nodes.
            configuration.publicTopicFilters = ["chat/#"]
            configuration.publishTopicFilters = ["chat/+"]
            services.append(PushNode(configuration: configuration, logger: logger))
        }

        let demo = CredentialAuthority(secret: secret).issue(terminal: "demo", ttl: 86_400, nowMillis: FleetClock.nowMillis())
        let other = CredentialAuthority(secret: secret).issue(terminal: "demo2", ttl: 86_400, nowMillis: FleetClock.nowMillis())
        let api = "http://\(host):\(port)"
        let banner = """

            PushFleet is running: redis 127.0.0.1:\(redis.port) (data in \(redis.directory)),
            control API \(api), push nodes mqtt://127.0.0.1:\(ports[0]) and mqtt://127.0.0.1:\(ports[1]).

            # a credential for terminal "demo" (or mint one: curl -s -X POST \(api)/v1/credentials -d '{"terminal":"demo"}')
            mosquitto_sub -h 127.0.0.1 -p \(ports[0]) -i demo -u demo -P '\(demo.password)' -t push/demo -t 'chat/#' -q 1 -c -v

            # push with the API, and with redis-cli
            curl -s -X POST \(api)/v1/push -H 'Content-Type: application/json' -d '{"to":["demo"],"payload":"hello from curl"}'
            redis-cli -p \(redis.port) XADD pushfleet:push '*' to demo payload 'hello from redis-cli'

            # another terminal, on the other push node, publishing to a chat room demo subscribes to
            mosquitto_pub -h 127.0.0.1 -p \(ports[1]) -i demo2 -u demo2 -P '\(other.password)' -t chat/lobby -m 'hello from demo2' -q 1

            # what happened to a message (use the id the push printed)
            curl -s \(api)/v1/messages/<id>
            curl -s \(api)/v1/terminals/demo

            Ctrl-C stops everything.


            """
        FileHandle.standardOutput.write(Data(banner.utf8))
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}
