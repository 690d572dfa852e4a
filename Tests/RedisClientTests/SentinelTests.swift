import FleetTestSupport
import Foundation
import Logging
import NIOPosix
import RedisClient
import Testing

/// Redis Sentinel against real processes: a master, its replica and a Sentinel on loopback.
@Suite(.serialized)
struct SentinelTests {
    /// The port of the server a connection is on.
    func port(of connection: RedisConnection) async throws -> Int? {
        let info = try await connection.send("INFO", "server").string ?? ""
        return info.split(separator: "\r\n").first { $0.hasPrefix("tcp_port:") }.flatMap { Int($0.dropFirst(9)) }
    }

    /// Polls `body` until it succeeds (up to `seconds`).
    func eventually<T>(seconds: Double, _ body: () async throws -> T) async throws -> T {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            do {
                return try await body()
            } catch {
                if Date() > deadline { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// The client finds the master through Sentinel; when the master is killed and Sentinel
    /// promotes the replica, the client's next connect goes to the new master, and what was
    /// replicated is there.
    @Test func theClientFollowsAFailover() async throws {
        let master = try RedisServer(arguments: ["--repl-diskless-sync-delay", "0"])
        let replica = try RedisServer(arguments: ["--replicaof", "127.0.0.1", String(master.port)])
        let direct = master.connection()
        try await eventually(seconds: 10) {
            try await direct.send("SET", "probe", "1")
            guard try await direct.send("WAIT", "1", "100").int == 1 else { throw RedisError(.unavailable, "replica not in sync") }
        }
        await direct.close()
        let sentinel = try RedisServer.sentinel(watching: master)
        var configuration = RedisConfiguration(host: "unused.invalid", port: 1)
        configuration.sentinel = try RedisConfiguration.Sentinel(list: "127.0.0.1:1,127.0.0.1:\(sentinel.port)", masterName: "mymaster")
        configuration.maximumBackoff = .milliseconds(200)
        let connection = RedisConnection(
            configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        // The first Sentinel listed is not there: the second answers.
        try await eventually(seconds: 5) { try await connection.send("SET", "before", "failover") }
        #expect(try await port(of: connection) == master.port)
        _ = try await connection.send("WAIT", "1", "1000")

        master.stop(kill: true)
        try await eventually(seconds: 20) {
            try await connection.send("SET", "after", "failover")
            guard try await port(of: connection) == replica.port else { throw RedisError(.unavailable, "not on the new master yet") }
        }
        #expect(try await connection.send("GET", "before").string == "failover")
        #expect(try await connection.send("ROLE").array?.first?.string == "master")
        await connection.close()
        _ = sentinel
    }

    /// A server the client is connected to becomes a replica (as an old master does once it is
    /// back after a failover): the write it refuses with READONLY closes the connection, and the
    /// client connects again.
    @Test func aReadOnlyReplyMakesTheClientReconnect() async throws {
        let server = try RedisServer()
        let other = try RedisServer()
        var configuration = server.configuration
        configuration.maximumBackoff = .milliseconds(200)
        let connection = RedisConnection(
            configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        let before = try await connection.send("CLIENT", "ID").int
        let admin = server.connection()
        try await admin.send("REPLICAOF", "127.0.0.1", String(other.port))
        await #expect(throws: RedisError.self) { try await connection.send("SET", "k", "v") }
        let after = try await eventually(seconds: 5) { try await connection.send("CLIENT", "ID").int }
        #expect(after != nil && after != before)
        await admin.close()
        await connection.close()
    }

    /// A Sentinel that requires a password is asked with it; without it, it refuses, and the
    /// client says it found no master.
    @Test func aSentinelWithAPassword() async throws {
        let master = try RedisServer()
        let sentinel = try RedisServer.sentinel(watching: master, password: "sentinel-secret")
        func connection(_ password: String?) throws -> RedisConnection {
            var configuration = RedisConfiguration(host: "unused.invalid", port: 1)
            configuration.sentinel = try RedisConfiguration.Sentinel(
                list: "127.0.0.1:\(sentinel.port)", masterName: "mymaster", password: password)
            configuration.maximumBackoff = .milliseconds(200)
            return RedisConnection(
                configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        }
        let with = try connection("sentinel-secret")
        #expect(try await with.send("SET", "k", "v") == .status("OK"))
        #expect(try await port(of: with) == master.port)
        await with.close()
        let without = try connection(nil)
        let error = await #expect(throws: RedisError.self) { try await without.send("SET", "k", "v") }
        #expect(error?.message.contains("no sentinel knows master mymaster") == true)
        await without.close()
    }

    @Test func sentinelListsParse() throws {
        let sentinel = try RedisConfiguration.Sentinel(list: "10.0.0.1:26379, [::1]:26380,sentinel-2", masterName: "m")
        #expect(sentinel.addresses.map(\.description) == ["10.0.0.1:26379", "[::1]:26380", "sentinel-2:26379"])
        #expect(throws: RedisError.self) { try RedisConfiguration.Sentinel(list: "", masterName: "m") }
        #expect(throws: RedisError.self) { try RedisConfiguration.Sentinel(list: "h:0", masterName: "m") }
        #expect(throws: RedisError.self) { try RedisConfiguration.Sentinel(list: "h:x", masterName: "m") }
        #expect(throws: RedisError.self) { try RedisConfiguration.Sentinel(list: "h:1", masterName: "") }
    }
}
