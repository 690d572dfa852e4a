import FleetCore
import Foundation
import NIOPosix

/// A real redis-server started for a test on a free loopback port, data in a temp dir.
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    public let directory: String
    private let process: ChildProcess

    /// Starts redis-server (from PATH) and waits until it accepts connections.
    public init(appendOnly: Bool = false) throws {
        guard let executable = Self.which("redis-server") else { throw TestSetupError("redis-server is not on PATH") }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("pushfleet-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for _ in 0..<5 {
            let port = try Self.freePort()
            let process = try ChildProcess(executable: executable, arguments: [
                "--port", String(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
                "--appendonly", appendOnly ? "yes" : "no", "--daemonize", "no", "--logfile", directory + "/redis.log",
            ])
            ChildProcessReaper.shared.add(process)
            for _ in 0..<200 where process.isRunning {
                // Connecting is not enough: another test's server may hold the port and ours have exited.
                if Self.canConnect(port: port) && process.isRunning {
                    self.port = port
                    self.process = process
                    return
                }
                usleep(25_000)
            }
            process.stop(signal: SIGKILL)
        }
        throw TestSetupError("redis-server did not start")
    }

    /// Stops the server (SIGKILL when `kill`, otherwise SIGTERM) and waits for it.
    public func stop(kill: Bool = false) {
        process.stop(signal: kill ? SIGKILL : SIGTERM)
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    public static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let directories = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
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
        return try ephemeralPort()
    }

    static func ephemeralPort() throws -> Int {
        let socket = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).wait()
        defer { try? socket.close().wait() }
        return socket.localAddress!.port!
    }

    static func canConnect(port: Int) -> Bool {
        let channel = try? ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).wait()
        try? channel?.close().wait()
        return channel != nil
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
