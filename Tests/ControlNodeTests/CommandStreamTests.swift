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
        // Handled entries are trimmed: the stream does not keep every push ever added.
        try await first.trimHandled()
        #expect(try await redis.send("XLEN", keys.commandStream).int == 0)
        // Order per terminal is the stream order.
        let t0 = (try await redis.send("LRANGE", keys.queue("t0"), "0", "-1").array ?? []).compactMap {
            $0.string.flatMap(StoredMessage.decode)
        }
        #expect(t0.map { String(decoding: $0.payloadBytes, as: UTF8.self) } == stride(from: 0, to: 40, by: 4).map { "m\($0)" })
        await redis.close()
    }

    /// Trimming keeps every entry that is pending (read, not acknowledged) or not read yet,
    /// and drops those before them.
    @Test func trimmingKeepsPendingAndUnreadEntries() async throws {
        let stream = keys.commandStream
        try await redis.send("XGROUP", "CREATE", stream, keys.commandGroup, "0", "MKSTREAM")
        var ids: [String] = []
        for index in 0..<5 { ids.append(try await redis.send("XADD", stream, "*", "to", "t", "payload", "m\(index)").string!) }
        let trimmer = consumer("trimmer")
        // Nothing read: nothing goes.
        try await trimmer.trimHandled()
        #expect(try await redis.send("XLEN", stream).int == 5)
        // Three read, the second of them acknowledged: the first is pending and stays, so
        // does everything after it.
        _ = try await redis.send("XREADGROUP", "GROUP", keys.commandGroup, "x", "COUNT", "3", "STREAMS", stream, ">")
        try await redis.send("XACK", stream, keys.commandGroup, ids[1])
        try await trimmer.trimHandled()
        #expect(try await redis.send("XLEN", stream).int == 5)
        // The first acknowledged: it goes, and the second (handled); the pending third stays.
        try await redis.send("XACK", stream, keys.commandGroup, ids[0])
        try await trimmer.trimHandled()
        #expect((try await redis.send("XRANGE", stream, "-", "+").array ?? []).compactMap { $0.array?.first?.string } == Array(ids[2...]))
        // All read ones acknowledged: only the unread remain.
        try await redis.send("XACK", stream, keys.commandGroup, ids[2])
        try await trimmer.trimHandled()
        #expect((try await redis.send("XRANGE", stream, "-", "+").array ?? []).compactMap { $0.array?.first?.string } == Array(ids[3...]))
        #expect(CommandStreamConsumer.entryID(after: "5-9") == "5-10")
        #expect(CommandStreamConsumer.entryID(after: "5-\(UInt64.max)") == "6-0")
        await redis.close()
    }

    /// Entries read for the first time (`>`) have no earlier attempt: they are stored in one
    /// batch with no lookup, at the batch path's cost (README "Cost of a push").
    @Test func freshEntriesAreStoredInOneBatchWithoutLookingForEarlierAttempts() async throws {
        let count = 50
        for index in 0..<count where index.isMultiple(of: 2) {
            try await redis.send("SET", keys.route("f\(index)"), Route(node: "n1", epoch: "e", connectedAt: 0).encoded)
        }
        for index in 0..<count {
            _ = try await redis.send("XADD", keys.commandStream, "*", "to", "f\(index)", "payload", "m\(index)")
        }
        try await redis.send("XGROUP", "CREATE", keys.commandStream, keys.commandGroup, "0", "MKSTREAM")
        try await redis.send("CONFIG", "RESETSTAT")
        let task = Task { await consumer("c1").run() }
        defer { task.cancel() }
        try await waitUntil {
            let pending = try await redis.send("XPENDING", keys.commandStream, keys.commandGroup).array?.first?.int ?? -1
            let acknowledged = try await redis.send("INFO", "commandstats").string?.contains("cmdstat_xack:") ?? false
            return pending == 0 && acknowledged
        }
        task.cancel()
        let stats = try await redis.send("INFO", "commandstats").string ?? ""
        func calls(_ name: String) -> Int {
            guard let line = stats.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_\(name):") }),
                let field = line.split(separator: ",").first(where: { $0.contains("calls=") })
            else { return 0 }
            return Int(field.split(separator: "=").last ?? "") ?? 0
        }
        #expect(calls("rpush") == count)
        #expect(calls("pexpire") == 2 * count)
        #expect(calls("mget") == 1)
        #expect(calls("hget") == 0)
        #expect(calls("hmget") == 0)
        #expect(calls("evalsha") == 0)
        #expect(calls("spublish") == 1)
        #expect(calls("xack") == 1)
        // Per status bucket: the records, `complete`, the expiry.
        let buckets = calls("expireat")
        #expect(buckets >= 1 && buckets <= 2 * StatusBucket.shards)
        #expect(calls("hset") == 2 * buckets)
        for index in 0..<count {
            #expect(try await redis.send("LLEN", keys.queue("f\(index)")).int == 1)
        }
        await redis.close()
    }

    @Test func invalidEntryIsAcknowledgedWithAnErrorStatus() async throws {
        let id = try await redis.send("XADD", keys.commandStream, "*", "payload", "no target").string!
        let task = Task { await consumer("c1").run() }
        defer { task.cancel() }
        let bucket = keys.statusBucket(StatusBucket(messageID: id))
        try await waitUntil { try await redis.send("HGET", bucket, MessageStatusField.error(id)).string != nil }
        task.cancel()
        #expect(
            try await redis.send("HGET", bucket, MessageStatusField.error(id)).string?.contains(
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

    @Test func sendAtAndDelayAreWithinTheStatusRetentionAndTheHorizon() throws {
        var configuration = ControlNodeConfiguration(
            redis: server.configuration, host: "127.0.0.1", port: 0, secret: "s", consumerName: "c")
        configuration.statusRetention = 3_600
        configuration.maximumScheduleAhead = 7_200
        let now = FleetClock.nowMillis()
        let due = try #require(try CommandStreamConsumer.dueTime(from: ["delay": "60"], configuration: configuration))
        #expect((now + 59_000...now + 62_000).contains(due))
        let at = FleetClock.nowSeconds() + 600
        #expect(try CommandStreamConsumer.dueTime(from: ["sendat": String(at)], configuration: configuration) == at * 1000)
        // The status retention bounds it (3600), not only the horizon (7200); one past is refused.
        #expect(try CommandStreamConsumer.dueTime(from: ["delay": "3600"], configuration: configuration) != nil)
        #expect(throws: APIError.self) { try CommandStreamConsumer.dueTime(from: ["delay": "3601"], configuration: configuration) }
        #expect(throws: APIError.self) {
            try CommandStreamConsumer.dueTime(from: ["sendat": String(FleetClock.nowSeconds() + 3_700)], configuration: configuration)
        }
        // Past: now. Neither: now. Both, or not numbers: refused.
        #expect(try CommandStreamConsumer.dueTime(from: ["sendat": "1"], configuration: configuration) == nil)
        #expect(try CommandStreamConsumer.dueTime(from: [:], configuration: configuration) == nil)
        for fields in [["delay": "5", "sendat": String(at)], ["delay": "soon"], ["sendat": "tomorrow"], ["delay": "-1"]] {
            #expect(throws: APIError.self, "\(fields)") { try CommandStreamConsumer.dueTime(from: fields, configuration: configuration) }
        }
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
