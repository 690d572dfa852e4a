import FleetCore
import FleetRedis
import FleetTestSupport
import Logging
import NIOPosix
import RedisClient
import Testing

@testable import ControlNode

@Suite(.serialized)
struct CommandStreamTests {
    let server: RedisServer
    let redis: RedisConnection
    let keys = FleetKeys()

    init() throws {
        server = try RedisServer()
        redis = server.connection(scripts: FleetScripts.all)
    }

    func consumer(_ name: String) -> CommandStreamConsumer {
        let configuration = ControlNodeConfiguration(
            redis: server.configuration, host: "127.0.0.1", port: 0, secret: "s", consumerName: name
        )
        let connection = server.connection(scripts: FleetScripts.all)
        let dispatcher = PushDispatcher(configuration: configuration, redis: connection, logger: Logger(label: name))
        return CommandStreamConsumer(
            configuration: configuration, redis: server.connection(scripts: FleetScripts.all), dispatcher: dispatcher,
            logger: Logger(label: name))
    }

    /// Polls `condition` (errors count as false) for up to five seconds.
    func waitUntil(_ condition: () async throws -> Bool) async throws {
        for _ in 0..<200 {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(25))
        }
    }

    @Test func entriesAreHandledOnceAcrossConsumersWithTheEntryIDAsMessageID() async throws {
        var entryIDs: [String] = []
        for index in 0..<40 {
            let id = try await redis.send("XADD", keys.commandStream, "*", "to", "t\(index % 4)", "payload", "m\(index)").string!
            entryIDs.append(id)
        }
        let first = consumer("c1")
        let second = consumer("c2")
        let running = [Task { await first.run() }, Task { await second.run() }]
        defer { for task in running { task.cancel() } }
        try await waitUntil {
            let pending = try await redis.send("XPENDING", keys.commandStream, keys.commandGroup).array?.first?.int ?? -1
            let total = try await (0..<4).asyncSum { try await redis.send("LLEN", keys.queue("t\($0)")).int ?? 0 }
            return pending == 0 && total == 40
        }
        for task in running { task.cancel() }
        var stored: [StoredMessage] = []
        for terminal in 0..<4 {
            stored += (try await redis.send("LRANGE", keys.queue("t\(terminal)"), "0", "-1").array ?? []).compactMap {
                $0.string.flatMap(StoredMessage.decode)
            }
        }
        #expect(stored.count == 40)
        #expect(Set(stored.map(\.id)) == Set(entryIDs))
        #expect(try await redis.send("XPENDING", keys.commandStream, keys.commandGroup).array?.first?.int == 0)
        // Order per terminal is the stream order.
        let t0 = (try await redis.send("LRANGE", keys.queue("t0"), "0", "-1").array ?? []).compactMap {
            $0.string.flatMap(StoredMessage.decode)
        }
        #expect(t0.map { String(decoding: $0.payloadBytes, as: UTF8.self) } == stride(from: 0, to: 40, by: 4).map { "m\($0)" })
        await redis.close()
    }

    @Test func invalidEntryIsAcknowledgedWithAnErrorStatus() async throws {
        let id = try await redis.send("XADD", keys.commandStream, "*", "payload", "no target").string!
        let task = Task { await consumer("c1").run() }
        defer { task.cancel() }
        try await waitUntil { try await redis.send("HGET", keys.messageStatus(id), "error").string != nil }
        task.cancel()
        #expect(
            try await redis.send("HGET", keys.messageStatus(id), "error").string?.contains(
                "exactly one of \"to\", \"topic\" or \"broadcast\"") == true)
        try await waitUntil { try await redis.send("XPENDING", keys.commandStream, keys.commandGroup).array?.first?.int == 0 }
        #expect(try await redis.send("XPENDING", keys.commandStream, keys.commandGroup).array?.first?.int == 0)
        await redis.close()
    }

    @Test func parsesFields() throws {
        let command = try CommandStreamConsumer.command(from: ["to": "a, b", "payload": "x", "qos": "0", "ttl": "60"])
        #expect(command.audience == .terminals(["a", "b"]))
        #expect(command.qos == 0)
        #expect(command.ttl == 60)
        #expect(try CommandStreamConsumer.command(from: ["broadcast": "1", "payload": "x"]).audience == .broadcast)
        #expect(try CommandStreamConsumer.command(from: ["topic": "news/x", "payloadbase64": "AAE="]).payload == [0, 1])
        #expect(throws: APIError.self) { try CommandStreamConsumer.command(from: ["to": "a", "topic": "b", "payload": "x"]) }
        #expect(throws: APIError.self) { try CommandStreamConsumer.command(from: ["to": "a", "payload": "x", "qos": "7"]) }
        server.stop()
    }
}

extension Range where Bound == Int {
    func asyncSum(_ body: (Int) async throws -> Int64) async rethrows -> Int64 {
        var total: Int64 = 0
        for value in self { total += try await body(value) }
        return total
    }
}
