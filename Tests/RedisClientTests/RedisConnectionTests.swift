import FleetTestSupport
import Logging
import NIOCore
import NIOPosix
import RedisClient
import Testing

@Suite(.serialized)
struct RedisConnectionTests {
    let server: RedisServer
    let connection: RedisConnection

    init() throws {
        server = try RedisServer()
        connection = server.connection()
    }

    @Test func commandsAndReplyKinds() async throws {
        #expect(try await connection.send("SET", "k", "v") == .status("OK"))
        #expect(try await connection.send("GET", "k").string == "v")
        #expect(try await connection.send("GET", "missing") == .null)
        #expect(try await connection.send("INCRBY", "n", "5") == .integer(5))
        #expect(try await connection.send("RPUSH", "l", "a", "b").int == 2)
        #expect(try await connection.send("LRANGE", "l", "0", "-1").array?.compactMap(\.string) == ["a", "b"])
        await connection.close()
    }

    @Test func binarySafeArguments() async throws {
        let bytes: [UInt8] = [0, 13, 10, 255, 36, 42]
        _ = try await connection.send(RedisCommand([Array("SET".utf8), Array("bin".utf8), bytes]))
        guard case .bulkString(let value) = try await connection.send("GET", "bin") else {
            Issue.record("expected a bulk string")
            return
        }
        #expect(Array(value.readableBytesView) == bytes)
        await connection.close()
    }

    @Test func errorRepliesThrowForOneCommandAndStayInPlaceInAPipeline() async throws {
        await #expect(throws: RedisError.self) { try await connection.send("NOSUCHCOMMAND") }
        let replies = try await connection.pipeline([
            RedisCommand("SET", "x", "1"),
            RedisCommand("LPUSH", "x", "oops"),
            RedisCommand("GET", "x"),
        ])
        #expect(replies.count == 3)
        guard case .error(let message) = replies[1] else {
            Issue.record("expected WRONGTYPE, got \(replies[1])")
            return
        }
        #expect(message.hasPrefix("WRONGTYPE"))
        #expect(replies[2].string == "1")
        await connection.close()
    }

    @Test func largePipelineKeepsOrder() async throws {
        let commands = (0..<2_000).map { _ in RedisCommand("INCR", "counter") }
        let replies = try await connection.pipeline(commands)
        #expect(replies.map { $0.int } == (1...2_000).map { Int64($0) })
        await connection.close()
    }

    @Test func fireAndForgetRepliesNeverReachAnotherCaller() async throws {
        // Interleave commands nobody waits for (one of them answered with an error, which is
        // logged and counted off like any reply) with pipelines that wait: each pipeline must
        // get exactly its own replies.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                connection.fireAndForget([
                    RedisCommand("INCR", "ignored"), RedisCommand("HGET", "ignored", "wrong-type"),
                    RedisCommand("SADD", "set", String(index)),
                ])
                group.addTask {
                    let replies = try await connection.pipeline([
                        RedisCommand("SET", "k\(index)", "v\(index)"), RedisCommand("GET", "k\(index)"),
                    ])
                    #expect(replies == [.status("OK"), .bulkString(ByteBuffer(string: "v\(index)"))])
                }
            }
            try await group.waitForAll()
        }
        #expect(try await connection.send("GET", "ignored").string == "200")
        #expect(try await connection.send("SCARD", "set").int == 200)
        await connection.close()
    }

    @Test func scriptFallsBackToEvalAfterScriptFlush() async throws {
        let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        let scripted = server.connection(scripts: [script])
        #expect(try await scripted.send(script.command(keys: ["s"], arguments: ["2"])).int == 2)
        try await scripted.send("SCRIPT", "FLUSH")
        #expect(try await scripted.send(script.command(keys: ["s"], arguments: ["3"])).int == 5)
        await scripted.close()
        await connection.close()
    }

    @Test func reconnectsAfterRedisKillsTheConnection() async throws {
        try await connection.send("SET", "before", "1")
        let idBefore = try await connection.send("CLIENT", "ID").int
        // CLIENT KILL TYPE normal closes every normal connection, ours included.
        let killer = server.connection()
        #expect(try await killer.send("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").int ?? 0 >= 1)
        var value: String?
        for _ in 0..<100 where value == nil {
            value = try? await connection.send("GET", "before").string
            if value == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(value == "1")
        // Answered on a new connection: the kill happened and the client reconnected.
        let idAfter = try await connection.send("CLIENT", "ID").int
        #expect(idBefore != nil && idAfter != nil && idAfter != idBefore)
        await killer.close()
        await connection.close()
    }

    @Test func failsFastWhileRedisIsDown() async throws {
        try await connection.send("PING")
        server.stop(kill: true)
        var sawUnavailable = false
        for _ in 0..<100 where !sawUnavailable {
            do {
                try await connection.send("PING")
            } catch let error as RedisError {
                sawUnavailable = error.code == .unavailable
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(sawUnavailable)
        await connection.close()
    }

    @Test func subscriberYieldsMessagesAndShardedMessages() async throws {
        let subscriber = RedisSubscriber(
            configuration: server.configuration,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: Logger(label: "test")
        )
        subscriber.subscribe(["plain"])
        subscriber.subscribe(["node:1"], sharded: true)
        subscriber.start()
        // Publish until both subscriptions are live.
        var received: [RedisPubSubMessage] = []
        let reader = Task {
            var seen: [RedisPubSubMessage] = []
            for await message in subscriber.messages {
                seen.append(message)
                if Set(seen.map(\.channel)) == ["plain", "node:1"] { break }
            }
            return seen
        }
        for attempt in 0..<50 {
            let plain = try await connection.send("PUBLISH", "plain", "p\(attempt)").int ?? 0
            let sharded = try await connection.send("SPUBLISH", "node:1", "s\(attempt)").int ?? 0
            if plain > 0 && sharded > 0 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        received = await reader.value
        #expect(received.contains { $0.channel == "plain" && String(buffer: $0.payload).hasPrefix("p") })
        #expect(received.contains { $0.channel == "node:1" && String(buffer: $0.payload).hasPrefix("s") })
        await subscriber.close()
        await connection.close()
    }

    @Test func subscriberTellsWhenRedisHasTheSubscription() async throws {
        let subscriber = RedisSubscriber(
            configuration: server.configuration,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: Logger(label: "test")
        )
        subscriber.subscribe(["plain"])
        subscriber.subscribe(["node:2"], sharded: true)
        subscriber.start()
        var iterator = subscriber.events.makeAsyncIterator()
        var channels: Set<String> = []
        while channels.count < 2, let event = await iterator.next() {
            if case .subscribed(let channel) = event { channels.insert(channel) }
        }
        #expect(channels == ["plain", "node:2"])
        // Confirmed means live: the very next publish reaches it, no retry needed.
        #expect(try await connection.send("SPUBLISH", "node:2", "x").int == 1)
        #expect(try await connection.send("PUBLISH", "plain", "y").int == 1)
        // Subscribed before the connection came up: once, not by the connect hook and again
        // by the queued command (each confirmation makes a node reload its index or wake
        // every session). The two messages come next, no confirmation between.
        var next: [RedisSubscriberEvent] = []
        while next.count < 2, let event = await iterator.next() { next.append(event) }
        #expect(next.allSatisfy { if case .message = $0 { true } else { false } }, "\(next)")
        await subscriber.close()
        await connection.close()
    }

    @Test func aSubscriberThatFallsBehindItsBufferDropsAndSaysSo() async throws {
        let subscriber = RedisSubscriber(
            configuration: server.configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"),
            bufferLimit: 10)
        subscriber.subscribe(["burst"])
        subscriber.start()
        // Wait for the confirmation, taking it out of the buffer: the buffer is empty then.
        var iterator = subscriber.events.makeAsyncIterator()
        while let event = await iterator.next() {
            if case .subscribed("burst") = event { break }
        }
        #expect(subscriber.takeOverflow() == 0)
        // Nobody reads: 10 messages fill the buffer, 40 are dropped.
        for index in 0..<50 { try await connection.send("PUBLISH", "burst", "m\(index)") }
        var dropped = 0
        for _ in 0..<100 where dropped < 40 {
            dropped += subscriber.takeOverflow()
            if dropped < 40 { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(dropped == 40)
        var kept: [String] = []
        while kept.count < 10, let event = await iterator.next() {
            if case .message(let message) = event { kept.append(String(buffer: message.payload)) }
        }
        #expect(kept == (0..<10).map { "m\($0)" })
        await subscriber.close()
        await connection.close()
    }

    @Test func authenticatesAsAnACLUserFromTheURL() async throws {
        try await connection.send("ACL", "SETUSER", "fleet", "on", ">p@ss:word", "~*", "&*", "+@all")
        let url = "redis://fleet:p%40ss%3Aword@127.0.0.1:\(server.port)/0"
        let user = RedisConnection(
            configuration: try RedisConfiguration(url: url), eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: Logger(label: "test"))
        #expect(try await user.send("ACL", "WHOAMI").string == "fleet")
        await user.close()
        await connection.close()
    }

    @Test func parsesURLs() throws {
        let full = try RedisConfiguration(url: "redis://:pw@10.0.0.1:6380/2")
        #expect(full.host == "10.0.0.1")
        #expect(full.port == 6380)
        #expect(full.password == "pw")
        #expect(full.database == 2)
        #expect(try RedisConfiguration(url: "redis://localhost").port == 6379)
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "http://x") }
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis://h:99999") }
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis://h:abc") }
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "redis:///3") }
        #expect(throws: RedisError.self) { try RedisConfiguration(url: "rediss://h") }
        let acl = try RedisConfiguration(url: "redis://pushfleet:p%40ss%3Aword@[::1]:6390/3")
        #expect(acl.username == "pushfleet" && acl.password == "p@ss:word")
        #expect(acl.host == "::1" && acl.port == 6390 && acl.database == 3)
        #expect(try RedisConfiguration(url: "redis://localhost").username == nil)
        server.stop()
    }
}
