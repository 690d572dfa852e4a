import FleetCore
import Foundation
import LocalRedis
import Logging
import NIOPosix
import RedisClient

/// A real redis-server started for a test on a free loopback port, data in a temp dir,
/// removed (and the server stopped) when the test lets go of it.
public final class RedisServer: @unchecked Sendable {
    private let server: LocalRedisServer
    public var port: Int { server.port }
    public var directory: String { server.directory }

    /// `arguments`: more redis-server options (`--replicaof 127.0.0.1 <port>` makes a replica).
    public convenience init(appendOnly: Bool = false, arguments: [String] = []) throws {
        try self.init(appendOnly: appendOnly, arguments: arguments, sentinelConfiguration: nil)
    }

    /// A Sentinel watching `master` under the name `name`, quorum 1, that calls it down after
    /// `downAfterMilliseconds` without an answer.
    /// `password`: the Sentinel requires it (`requirepass`).
    public static func sentinel(
        watching master: RedisServer, name: String = "mymaster", downAfterMilliseconds: Int = 1_000, password: String? = nil
    ) throws -> RedisServer {
        try RedisServer(
            appendOnly: false, arguments: [],
            sentinelConfiguration: """
                sentinel monitor \(name) 127.0.0.1 \(master.port) 1
                sentinel down-after-milliseconds \(name) \(downAfterMilliseconds)
                sentinel failover-timeout \(name) 3000
                \(password.map { "requirepass \($0)" } ?? "")

                """)
    }

    private init(appendOnly: Bool, arguments: [String], sentinelConfiguration: String?) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pushfleet-test-\(UUID().uuidString)").path
        var lastError: (any Error)?
        for _ in 0..<5 {
            do {
                server = try LocalRedisServer(
                    port: try Self.freePort(), directory: directory, appendOnly: appendOnly, arguments: arguments,
                    sentinelConfiguration: sentinelConfiguration)
                ChildProcessReaper.shared.add(server.process)
                return
            } catch {
                lastError = error
            }
        }
        throw lastError ?? TestSetupError("redis-server did not start")
    }

    /// Stops the server (SIGKILL when `kill`, otherwise SIGTERM) and waits for it.
    public func stop(kill: Bool = false) {
        server.stop(kill: kill)
    }

    /// The configuration that reaches this server.
    public var configuration: RedisConfiguration { RedisConfiguration(host: "127.0.0.1", port: port) }

    /// A new client connection to this server.
    /// A client of this server; `followingCluster: false` keeps it on this server when it is
    /// a cluster node.
    public func connection(scripts: [RedisScript] = [], followingCluster: Bool = true) -> RedisConnection {
        var configuration = configuration
        configuration.detectsCluster = followingCluster
        return RedisConnection(
            configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"),
            scripts: scripts)
    }

    deinit {
        stop()
        if ProcessInfo.processInfo.environment["PUSHFLEET_KEEP_TEST_DATA"] == nil { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// A port no other test in this process was given, that is free right now.
    public static func freePort() throws -> Int {
        for _ in 0..<100 {
            let port = ChildProcessReaper.shared.nextPort()
            if let socket = try? ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: port).wait() {
                try? socket.close().wait()
                return port
            }
        }
        return try LocalRedisServer.ephemeralPort()
    }
}

public struct TestSetupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Kills every child a test started when the test process exits, so none outlives it.
final class ChildProcessReaper: @unchecked Sendable {
    static let shared: ChildProcessReaper = {
        let reaper = ChildProcessReaper()
        atexit { ChildProcessReaper.shared.killAll() }
        return reaper
    }()

    private let lock = NSLock()
    private var children: [ChildProcess] = []
    // Ports handed out from a per-process range so parallel tests never race for one.
    // Below the ephemeral range (32768+), so no client socket ever holds one.
    private var port = 20_000 + Int(getpid() % 100) * 100

    func add(_ child: ChildProcess) {
        lock.withLock { children.append(child) }
    }

    func nextPort() -> Int {
        lock.withLock {
            port += 1
            if port >= 32_000 { port = 20_000 }
            return port
        }
    }

    func killAll() {
        let all = lock.withLock { children }
        for child in all where child.isRunning { kill(child.pid, SIGKILL) }
    }
}

/// A Redis Cluster of `masters` masters (no replicas) on loopback, made with
/// `redis-cli --cluster create`; its slots are spread evenly, and every node agrees on it.
public final class RedisClusterServers: @unchecked Sendable {
    public let servers: [RedisServer]
    public var ports: [Int] { servers.map(\.port) }

    public init(masters: Int = 3) throws {
        var servers: [RedisServer] = []
        for _ in 0..<masters {
            servers.append(
                try RedisServer(arguments: [
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                ]))
        }
        self.servers = servers
        let create = Process()
        create.executableURL = URL(fileURLWithPath: LocalRedisServer.which("redis-cli") ?? "/usr/bin/redis-cli")
        create.arguments = ["--cluster", "create"] + servers.map { "127.0.0.1:\($0.port)" } + ["--cluster-yes"]
        create.standardOutput = FileHandle.nullDevice
        create.standardError = FileHandle.nullDevice
        try create.run()
        create.waitUntilExit()
        guard create.terminationStatus == 0 else { throw TestSetupError("redis-cli --cluster create failed") }
    }

    /// Waits until every node says the cluster is ok (up to 10 s).
    public func waitUntilReady() async throws {
        for _ in 0..<200 {
            var ready = true
            for server in servers {
                let connection = server.connection(followingCluster: false)
                let info = (try? await connection.send("CLUSTER", "INFO").string) ?? ""
                await connection.close()
                if !info.contains("cluster_state:ok") { ready = false }
            }
            if ready { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestSetupError("the cluster never became ready")
    }
}
