import Foundation
import NIOPosix

/// A redis-server child process on a loopback port with its data in a directory: what
/// `pushfleet dev` runs, and what the tests start for themselves.
public final class LocalRedisServer: @unchecked Sendable {
    public let port: Int
    public let directory: String
    /// The child process.
    public let process: ChildProcess

    /// Starts redis-server (from PATH) on `port` and waits until its own log says it is ready.
    /// Throws if it exits first (the port was taken) or does not come up: a successful TCP
    /// connect alone could reach another process that holds the port. `arguments` go after
    /// the defaults (a test's `--replicaof`, say).
    /// `sentinelConfiguration`: run as a Sentinel with this configuration text (written to
    /// `directory`/sentinel.conf, which Sentinel rewrites as it learns).
    public init(port: Int, directory: String, appendOnly: Bool, arguments extra: [String] = [], sentinelConfiguration: String? = nil) throws
    {
        guard let executable = Self.which("redis-server") else {
            throw ChildProcessError(message: "redis-server is not on PATH: install it (apt-get install redis-server) or run scripts/dev")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var leading: [String] = []
        if let sentinelConfiguration {
            let path = directory + "/sentinel.conf"
            try sentinelConfiguration.write(toFile: path, atomically: true, encoding: .utf8)
            leading = [path, "--sentinel"]
        }
        let process = try ChildProcess(
            executable: executable,
            arguments: leading + [
                "--port", String(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
                "--appendonly", appendOnly ? "yes" : "no", "--appendfsync", "everysec", "--daemonize", "no",
                // Status buckets expire whole (README "Redis key layout"): freed off the main thread.
                "--lazyfree-lazy-expire", "yes",
                "--loglevel", "notice", "--logfile", directory + "/redis.log",
            ] + extra)
        let log = directory + "/redis.log"
        for _ in 0..<400 where process.isRunning {
            // A Sentinel does not say "ready": it says whom it monitors.
            let ready = sentinelConfiguration == nil ? "Ready to accept connections" : "+monitor master"
            if let text = try? String(contentsOfFile: log, encoding: .utf8), text.contains(ready) {
                self.port = port
                self.directory = directory
                self.process = process
                return
            }
            usleep(25_000)
        }
        process.stop(signal: SIGKILL)
        throw ChildProcessError(message: "redis-server did not start on port \(port) (see \(directory)/redis.log)")
    }

    /// Stops the server (SIGTERM, or SIGKILL when `kill`) and waits for it to exit.
    public func stop(kill: Bool = false) {
        process.stop(signal: kill ? SIGKILL : SIGTERM)
    }

    /// The first executable called `name` on PATH (or in /usr/sbin, /sbin).
    public static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let directories = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// A port the kernel considers free on 127.0.0.1 right now.
    public static func ephemeralPort() throws -> Int {
        let socket = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).wait()
        defer { try? socket.close().wait() }
        return socket.localAddress?.port ?? 0
    }
}
