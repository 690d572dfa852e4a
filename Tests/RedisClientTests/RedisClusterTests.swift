import FleetTestSupport
import Logging
import NIOPosix
import RedisClient
import Testing

/// Hash slots as Redis Cluster computes them, and the cluster client against a real cluster of
/// three masters on loopback.
@Suite(.serialized)
struct RedisClusterTests {
    @Test func slotsAreRedisClusters() {
        // The check value of CRC16/XMODEM, and slots Redis's CLUSTER KEYSLOT gives.
        #expect(RedisClusterSlots.slot(of: "123456789") == 0x31C3 % 16_384)
        #expect(RedisClusterSlots.slot(of: "foo") == 12_182)
        #expect(RedisClusterSlots.slot(of: "bar") == 5_061)
        #expect(RedisClusterSlots.slot(of: "{user1000}.following") == RedisClusterSlots.slot(of: "{user1000}.followers"))
        #expect(RedisClusterSlots.slot(of: "pushfleet:{t:a}:queue") == RedisClusterSlots.slot(of: "t:a"))
        // An empty tag hashes the whole key; only the first tag counts.
        #expect(RedisClusterSlots.slot(of: "foo{}{bar}") == RedisClusterSlots.slot(of: Array("foo{}{bar}".utf8)))
        #expect(RedisClusterSlots.slot(of: "foo{{bar}}zap") == RedisClusterSlots.slot(of: "{bar"))
        #expect(RedisClusterSlots.slot(of: "foo{bar}{zap}") == RedisClusterSlots.slot(of: "bar"))
    }

    @Test func commandKeys() throws {
        func keys(_ command: RedisCommand) -> [String] { command.keys.map { String(decoding: $0, as: UTF8.self) } }
        #expect(keys(RedisCommand("GET", "k")) == ["k"])
        #expect(keys(RedisCommand("MGET", "a", "b")) == ["a", "b"])
        #expect(keys(RedisCommand("EVALSHA", "sha", "2", "k1", "k2", "arg")) == ["k1", "k2"])
        #expect(keys(RedisCommand("XREADGROUP", "GROUP", "g", "c", "COUNT", "10", "STREAMS", "s1", "s2", ">", ">")) == ["s1", "s2"])
        #expect(keys(RedisCommand("MSET", "a", "1", "b", "2")) == ["a", "b"])
        #expect(keys(RedisCommand("PING")).isEmpty)
        #expect(keys(RedisCommand("XINFO", "GROUPS", "stream")) == ["stream"])
        #expect(keys(RedisCommand("XGROUP", "CREATE", "stream", "group", "0")) == ["stream"])
        #expect(keys(RedisCommand("MEMORY", "USAGE", "k")) == ["k"] && keys(RedisCommand("MEMORY", "STATS")).isEmpty)
        #expect(try RedisCommand("MGET", "{t:x}:a", "{t:x}:b").slot() == RedisClusterSlots.slot(of: "t:x"))
        #expect(throws: RedisError.self) { try RedisCommand("MGET", "a", "b").slot() }
    }

    /// A node never introduced to another does not know its own address: CLUSTER SLOTS names
    /// it with an empty host, which is the host the reply came from.
    @Test func aSlotMapWithoutAHostIsTheHostAsked() throws {
        let reply = RedisReply.array([
            .array([
                .integer(0), .integer(16_383), .array([.bulkString(.init(string: "")), .integer(7000), .bulkString(.init(string: "id"))]),
            ])
        ])
        let map = try RedisClusterSlots.Map(clusterSlots: reply, askedHost: "10.0.0.5")
        #expect(map.nodes == [RedisAddress(host: "10.0.0.5", port: 7000)] && map.coversEverySlot)
        #expect(throws: RedisError.self) { try RedisClusterSlots.Map(clusterSlots: .array([.array([.integer(5)])])) }
    }

    /// A client given one node of the cluster, as `--redis` is: it finds out it is a cluster.
    func client(_ cluster: RedisClusterServers) async throws -> RedisConnection {
        let redis = RedisConnection(
            configuration: RedisConfiguration(host: "127.0.0.1", port: cluster.ports[1]),
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: Logger(label: "test"))
        redis.start()
        for _ in 0..<200 where await !redis.isConnected || !redis.isCluster {
            try await Task.sleep(for: .milliseconds(25))
        }
        #expect(redis.isCluster)
        return redis
    }

    /// A pipeline spread over every master: each command goes to the master of its slot, the
    /// replies come back in order, and each key is where Redis Cluster says.
    @Test func aPipelineSpreadOverTheMasters() async throws {
        let cluster = try RedisClusterServers()
        try await cluster.waitUntilReady()
        let redis = try await client(cluster)
        let keys = (0..<300).map { "key-\($0)" }
        let set = try await redis.pipeline(keys.map { RedisCommand("SET", $0, "value of \($0)") })
        #expect(set.allSatisfy { $0 == .status("OK") })
        let got = try await redis.pipeline(keys.map { RedisCommand("GET", $0) })
        #expect(got.map(\.string) == keys.map { "value of \($0)" })
        let map = await redis.clusterSlots
        #expect(map.coversEverySlot && map.nodes.count == 3)
        // Each key is on the master the map names.
        for key in keys.prefix(30) {
            let owner = try #require(map.node(for: RedisClusterSlots.slot(of: key)))
            let direct = RedisServerConnection(port: owner.port)
            #expect(try await direct.connection.send("GET", key).string == "value of \(key)")
            await direct.connection.close()
        }
        // Keys sharing a hash tag go together; keys that do not are refused before sending.
        _ = try await redis.pipeline([RedisCommand("SET", "{t:x}:a", "1"), RedisCommand("SET", "{t:x}:b", "2")])
        #expect(try await redis.send("MGET", "{t:x}:a", "{t:x}:b").array?.map(\.string) == ["1", "2"])
        // MGET and DEL across slots are split per slot and their replies put together; other
        // commands across slots are refused without being sent.
        #expect(
            try await redis.send("MGET", "key-1", "{t:x}:a", "key-2", "nothing").array?.map(\.string) == [
                "value of key-1", "1", "value of key-2", nil,
            ])
        #expect(try await redis.send("DEL", "key-1", "key-2", "nothing").int == 2)
        await #expect(throws: RedisError.self) { try await redis.send("MSET", "key-3", "c", "key-4", "d") }
        await redis.close()
    }

    /// A slot moved to another master after the client read the map: the old master answers
    /// MOVED, the client reads the map again and the command runs where the slot is. Halfway
    /// through a migration a key already moved is answered with ASK, and the command goes
    /// there after ASKING.
    @Test func movedAndAskRedirects() async throws {
        let cluster = try RedisClusterServers()
        try await cluster.waitUntilReady()
        let redis = try await client(cluster)
        let key = "migrating-key"
        let slot = RedisClusterSlots.slot(of: key)
        try await redis.send("SET", key, "before")
        let map = await redis.clusterSlots
        let source = try #require(map.node(for: slot))
        let target = try #require(map.nodes.first { $0 != source })
        let from = RedisServerConnection(port: source.port)
        let to = RedisServerConnection(port: target.port)
        let sourceID = try #require(try await from.connection.send("CLUSTER", "MYID").string)
        let targetID = try #require(try await to.connection.send("CLUSTER", "MYID").string)
        // Halfway: the slot is migrating, the key already on the target.
        try await to.connection.send("CLUSTER", "SETSLOT", String(slot), "IMPORTING", sourceID)
        try await from.connection.send("CLUSTER", "SETSLOT", String(slot), "MIGRATING", targetID)
        try await from.connection.send("MIGRATE", "127.0.0.1", String(target.port), key, "0", "5000")
        #expect(try await redis.send("GET", key).string == "before")  // ASK, then ASKING + GET on the target
        // Done: the slot belongs to the target everywhere.
        for port in cluster.ports {
            let node = RedisServerConnection(port: port)
            try await node.connection.send("CLUSTER", "SETSLOT", String(slot), "NODE", targetID)
            await node.connection.close()
        }
        try await redis.send("SET", key, "after")  // MOVED, map read again
        #expect(await redis.clusterSlots.node(for: slot) == target)
        #expect(try await to.connection.send("GET", key).string == "after")
        await from.connection.close()
        await to.connection.close()
        await redis.close()
    }
}

extension RedisClusterTests {
    /// A subscriber given the commands connection follows it into the cluster: a sharded
    /// channel is subscribed on its slot's master, and when the slot moves to another master
    /// (the server drops the subscription) it is subscribed again there; a plain channel
    /// hears a PUBLISH sent anywhere, whose count is the channel's subscribers.
    @Test(.timeLimit(.minutes(1))) func aSubscriberFollowsItsShardedChannelToAnotherMaster() async throws {
        let cluster = try RedisClusterServers()
        try await cluster.waitUntilReady()
        let redis = try await client(cluster)
        let subscriber = RedisSubscriber(
            configuration: RedisConfiguration(host: "127.0.0.1", port: cluster.ports[1]),
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: Logger(label: "test"), commands: redis)
        let channel = "node-channel-7"
        subscriber.subscribe([channel], sharded: true)
        subscriber.subscribe(["everyone"])
        subscriber.start()
        var events = subscriber.events.makeAsyncIterator()
        func next(_ wanted: (RedisSubscriberEvent) -> Bool) async -> RedisSubscriberEvent? {
            while let event = await events.next() {
                if wanted(event) { return event }
            }
            return nil
        }
        var subscribed: Set<RedisSubscriberEvent> = []
        while subscribed.count < 2, let event = await next({ if case .subscribed = $0 { true } else { false } }) {
            subscribed.insert(event)
        }
        #expect(subscribed == [.subscribed(channel), .subscribed("everyone")])
        #expect(try await redis.send("SPUBLISH", channel, "one").int == 1)
        #expect(
            await next { if case .message = $0 { true } else { false } } == .message(.init(channel: channel, payload: .init(string: "one")))
        )
        #expect(try await redis.send("PUBLISH", "everyone", "all").int == 1)
        #expect(
            await next { if case .message = $0 { true } else { false } }
                == .message(.init(channel: "everyone", payload: .init(string: "all"))))

        // The channel's slot moves to another master (it holds no keys: no MIGRATE needed).
        let slot = RedisClusterSlots.slot(of: channel)
        let map = await redis.clusterSlots
        let source = try #require(map.node(for: slot))
        let target = try #require(map.nodes.first { $0 != source })
        let to = RedisServerConnection(port: target.port)
        let targetID = try #require(try await to.connection.send("CLUSTER", "MYID").string)
        // The owner first (it drops its subscribers then), then the others.
        let ordered = [source.port] + cluster.ports.filter { $0 != source.port }
        for port in ordered {
            let node = RedisServerConnection(port: port)
            try await node.connection.send("CLUSTER", "SETSLOT", String(slot), "NODE", targetID)
            await node.connection.close()
        }
        #expect(await next { $0 == .subscribed(channel) } != nil)
        #expect(try await redis.send("SPUBLISH", channel, "two").int == 1)  // MOVED, followed
        #expect(
            await next { if case .message = $0 { true } else { false } } == .message(.init(channel: channel, payload: .init(string: "two")))
        )
        #expect(await subscriber.isConnected)
        await to.connection.close()
        await subscriber.close()
        await redis.close()
    }

    /// `--redis` may name more nodes of the cluster: while the first does not answer, the
    /// next is tried, and the client finds the cluster through it.
    @Test(.timeLimit(.minutes(1))) func aDeadFirstAddressIsPassedOver() async throws {
        let cluster = try RedisClusterServers()
        try await cluster.waitUntilReady()
        let configuration = try RedisConfiguration(urls: "redis://:pw@127.0.0.1:1, redis://127.0.0.1:\(cluster.ports[2])")
        #expect(configuration.seeds == [RedisAddress(host: "127.0.0.1", port: cluster.ports[2])] && configuration.password == "pw")
        var open = configuration
        open.password = nil
        let redis = RedisConnection(
            configuration: open, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        redis.start()
        for _ in 0..<200 where await !redis.isConnected || !redis.isCluster {
            try await Task.sleep(for: .milliseconds(25))
        }
        #expect(redis.isCluster)
        #expect(try await redis.send("SET", "passed-over", "yes") == .status("OK"))
        await redis.close()
        #expect(throws: RedisError.self) { try RedisConfiguration(urls: " , ") }
    }

    /// WAIT goes to every master (the fewest replicas any reached: none here), and a command
    /// whose keys span slots and cannot be split is refused without being sent.
    @Test func waitAsksEveryMaster() async throws {
        let cluster = try RedisClusterServers()
        try await cluster.waitUntilReady()
        let redis = try await client(cluster)
        _ = try await redis.pipeline((0..<30).map { RedisCommand("SET", "w-\($0)", "x") })
        #expect(try await redis.send("WAIT", "0", "100").int == 0)
        let replies = try await redis.pipeline([RedisCommand("EVAL", "return 1", "2", "a", "b"), RedisCommand("GET", "w-1")])
        #expect(
            replies[0].string?.hasPrefix("CROSSSLOT") == true
                || { if case .error(let m) = replies[0] { m.hasPrefix("CROSSSLOT") } else { false } }())
        #expect(replies[1].string == "x")
        await redis.close()
    }
}

/// A plain connection to one node of a local cluster (not following the cluster).
struct RedisServerConnection {
    let connection: RedisConnection
    init(port: Int) {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: port)
        configuration.detectsCluster = false
        connection = RedisConnection(
            configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
    }
}
