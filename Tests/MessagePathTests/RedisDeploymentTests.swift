import ControlNode
import FleetTestSupport
import Logging
import PushNode
import RedisClient
import Testing

/// Pointed at a Redis Cluster node, which they cannot use yet, both kinds of node refuse to
/// start and say why, rather than meet MOVED answers for most keys.
@Suite struct RedisDeploymentTests {
    @Test func nodesRefuseARedisClusterNodeAndSayWhy() async throws {
        let server = try RedisServer(arguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let node = PushNode(
            configuration: PushNodeConfiguration(
                redis: server.configuration, mqttHost: "127.0.0.1", mqttPort: 0, nodeID: "n1", secret: "deployment-tests-secret-32-bytes"),
            logger: logger)
        let error = await #expect(throws: RedisError.self) { try await node.run() }
        #expect(error?.code == .invalidConfiguration && error?.message.contains("Redis Cluster node") == true)
        let control = ControlNode(
            configuration: ControlNodeConfiguration(
                redis: server.configuration, host: "127.0.0.1", port: 0, secret: "deployment-tests-secret-32-bytes", consumerName: "c1"),
            logger: logger)
        await #expect(throws: RedisError.self) { try await control.run() }
    }
}
