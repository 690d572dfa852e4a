import FleetCore
import FleetRedis
import FleetTestSupport
import Logging
import NIOPosix
import RedisClient
import Testing

@testable import ControlNode

@Suite(.serialized)
struct PushDispatcherTests {
    let server: RedisServer
    let redis: RedisConnection
    let configuration: ControlNodeConfiguration
    let keys = FleetKeys()

    init() throws {
        server = try RedisServer()
        redis = server.connection(scripts: FleetScripts.all)
        var configuration = ControlNodeConfiguration(
            redis: server.configuration, host: "127.0.0.1", port: 0, secret: "s", consumerName: "c1")
        configuration.offlineQueueCap = 3
        self.configuration = configuration
    }

    var dispatcher: PushDispatcher { PushDispatcher(configuration: configuration, redis: redis, logger: Logger(label: "test")) }

    /// The counts `GET /v1/messages/{id}` reports.
    func status(_ id: String) async throws -> [String: Int64] {
        let body = try await MessageStatusReader(redis: redis, keys: keys).status(of: id)
        var counts: [String: Int64] = [:]
        for name in ["targets"] + MessageState.allCases.map(\.rawValue) {
            if case .int(let value) = body[name] { counts[name] = value }
        }
        return counts
    }

    /// Takes `complete` out of a message's status, as if its push had died before the end.
    func uncomplete(_ id: String) async throws {
        try await redis.send("HDEL", keys.statusBucket(StatusBucket(messageID: id)), MessageStatusField.complete(id))
    }

    func queue(_ terminal: String) async throws -> [StoredMessage] {
        (try await redis.send("LRANGE", keys.queue(terminal), "0", "-1").array ?? []).compactMap { $0.string.flatMap(StoredMessage.decode) }
    }

    @Test func storesForOfflineTerminalsBeforeReturning() async throws {
        let receipt = try await dispatcher.push(PushCommand(audience: .terminals(["a", "b", "a"]), payload: Array("hi".utf8)))
        #expect(receipt.targets == 2)
        let stored = try await queue("a")
        #expect(stored.map(\.id) == [receipt.id])
        #expect(stored.first?.topic == "push/a")
        #expect(stored.first?.payloadBytes == Array("hi".utf8))
        #expect(try await queue("b").count == 1)
        #expect(
            try await status(receipt.id) == [
                "targets": 2, "queued": 2, "delivered": 0, "acknowledged": 0, "expired": 0, "dropped": 0, "replaced": 0, "withdrawn": 0,
            ])
        await redis.close()
    }

    @Test func manyPushesShareTheirPipelinesAndEachIsAcceptedOnItsOwn() async throws {
        try await redis.send("SET", keys.route("m1"), Route(node: "n7", epoch: "e", connectedAt: 0).encoded)
        let commands = [
            PushCommand(audience: .terminals(["m1", "m2"]), payload: [1]),
            PushCommand(audience: .terminals(["m2"]), payload: [2]),
            PushCommand(audience: .terminals(["m3"]), payload: [3], ttl: 0),  // online only: its own path
            PushCommand(audience: .terminals(["m1"]), payload: [4], idempotencyKey: "k-many"),
        ]
        let wakes = WakeBatch()
        let results = await dispatcher.pushMany(commands, wakes: wakes)
        let receipts = try results.map { try $0.get() }
        #expect(receipts.map(\.targets) == [2, 1, 1, 1])
        #expect(Set(receipts.map(\.id)).count == 4)
        // Stored, in order for m2, and every status with its targets queued. Only the push
        // with an idempotency key (and the online-only one, which has no stored plan) is marked
        // complete: a new id of the API is never attempted again, and its mark would only cost.
        #expect(try await queue("m2").map(\.payloadBytes) == [[1], [2]])
        #expect(try await queue("m1").map(\.payloadBytes) == [[1], [4]])
        for (receipt, queued) in zip(receipts, [2, 1, 0, 1]) {
            let earlier = try await dispatcher.earlierAttempt(receipt.id)
            #expect(earlier.record != nil)
            #expect(earlier.complete == (receipt.id != receipts[0].id && receipt.id != receipts[1].id))
            #expect(try await status(receipt.id)["queued"] == Int64(queued))
        }
        #expect(try await status(receipts[2].id)["dropped"] == 1)  // m3 is offline
        // Topic pushes in a batch each get their own receipt.
        let topics = await dispatcher.pushMany(
            (0..<3).map { _ in PushCommand(audience: .topic("news/x"), payload: [5]) }, wakes: WakeBatch())
        #expect(Set(try topics.map { try $0.get().id }).count == 3)
        // The node holding m1 is to be woken once, with both of m1's new entries.
        let wake = wakes.take()["n7"]
        #expect(wake?.terminals == ["m1", "m1"])
        #expect(wake?.entries.count == 2)
        await redis.close()
    }

    @Test func onlineOnlyPushToOfflineTerminalIsDropped() async throws {
        let receipt = try await dispatcher.push(PushCommand(audience: .terminals(["x"]), payload: [1], ttl: 0))
        #expect(try await queue("x").isEmpty)
        #expect(try await status(receipt.id)["dropped"] == 1)
        #expect(try await status(receipt.id)["queued"] == 0)
        await redis.close()
    }

    @Test func batchOverTheCapDropsTheOldestAndCountsIt() async throws {
        let commands = (0..<5).map { PushCommand(audience: .terminals(["b"]), payload: [UInt8($0)]) }
        let ids = try await dispatcher.pushMany(commands, wakes: WakeBatch()).map { try $0.get().id }
        // One pipeline stores all five: the list is trimmed back to the cap right after.
        #expect(try await queue("b").count == 3)
        let dropped = try await ids.asyncMap { try await status($0)["dropped"] ?? -1 }
        #expect(dropped.reduce(0, +) == 2)
        #expect(
            try await status(ids[4]) == [
                "targets": 1, "queued": 1, "delivered": 0, "acknowledged": 0, "expired": 0, "dropped": 0, "replaced": 0, "withdrawn": 0,
            ])
        await redis.close()
    }

    @Test func capDropsTheOldestAndCountsIt() async throws {
        var ids: [String] = []
        for index in 0..<4 {
            ids.append(try await dispatcher.push(PushCommand(audience: .terminals(["c"]), payload: [UInt8(index)])).id)
        }
        #expect(try await queue("c").map(\.id) == Array(ids.dropFirst()))
        #expect(try await status(ids[0])["dropped"] == 1)
        #expect(try await status(ids[0])["queued"] == 0)
        await redis.close()
    }

    @Test func idempotencyKeyNeverCreatesASecondMessage() async throws {
        let command = PushCommand(audience: .terminals(["i"]), payload: [1], idempotencyKey: "order-17")
        let first = try await dispatcher.push(command)
        let second = try await dispatcher.push(command)
        #expect(first.id == second.id)
        #expect(try await queue("i").count == 1)
        await redis.close()
    }

    @Test func concurrentCallsWithOneIdempotencyKeyMakeOneMessage() async throws {
        let command = PushCommand(audience: .terminals(["cc"]), payload: [1], idempotencyKey: "same")
        let dispatcher = self.dispatcher
        let ids = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<8 { group.addTask { try await dispatcher.push(command).id } }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(ids.count == 1)
        #expect(try await queue("cc").count == 1)
        #expect(try await status(ids.first!)["queued"] == 1)
        await redis.close()
    }

    @Test func handlingTheSameMessageAgainStoresNothingTwice() async throws {
        // A claimed stream entry or a retried API call runs the push again under its id.
        let command = PushCommand(audience: .terminals(["r1", "r2"]), payload: [7])
        _ = try await dispatcher.push(command, id: "1-0")
        try await uncomplete("1-0")
        _ = try await dispatcher.push(command, id: "1-0")
        #expect(try await queue("r1").map(\.id) == ["1-0"])
        #expect(try await queue("r2").map(\.id) == ["1-0"])
        #expect(
            try await status("1-0") == [
                "targets": 2, "queued": 2, "delivered": 0, "acknowledged": 0, "expired": 0, "dropped": 0, "replaced": 0, "withdrawn": 0,
            ])
        // An entry an unfinished attempt never stored is added by the next one.
        try await redis.send("DEL", keys.queue("r2"))
        try await uncomplete("1-0")
        _ = try await dispatcher.push(command, id: "1-0")
        #expect(try await queue("r2").map(\.id) == ["1-0"])
        #expect(try await queue("r1").count == 1)
        // A completed push is not redone: it answers with its receipt.
        try await redis.send("DEL", keys.queue("r2"))
        #expect(try await dispatcher.push(command, id: "1-0") == PushReceipt(id: "1-0", targets: 2))
        #expect(try await queue("r2").isEmpty)
        await redis.close()
    }

    @Test func aListThatWasThereAlreadyLivesAsLongAsItsNewestEntry() async throws {
        _ = try await dispatcher.push(PushCommand(audience: .terminals(["e1"]), payload: [1], ttl: 60))
        let first = try await redis.send("PTTL", keys.queue("e1")).int ?? 0
        #expect(first > 50_000 && first <= 60_000)
        // A longer-lived entry extends the list...
        _ = await dispatcher.pushMany([PushCommand(audience: .terminals(["e1"]), payload: [2], ttl: 3600)], wakes: WakeBatch())
        #expect(try await redis.send("PTTL", keys.queue("e1")).int ?? 0 > 3_500_000)
        // ...a shorter-lived one leaves it alone.
        _ = try await dispatcher.push(PushCommand(audience: .terminals(["e1"]), payload: [3], ttl: 5))
        #expect(try await redis.send("PTTL", keys.queue("e1")).int ?? 0 > 3_500_000)
        #expect(try await queue("e1").map(\.payloadBytes) == [[1], [2], [3]])
        await redis.close()
    }

    @Test func wakesTheNodeHoldingTheTerminal() async throws {
        try await redis.send("SET", keys.route("on"), Route(node: "n9", epoch: "e", connectedAt: 0).encoded)
        let subscriber = RedisSubscriber(
            configuration: configuration.redis, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        subscriber.subscribe([keys.nodeChannel("n9")], sharded: true)
        subscriber.start()
        let reader = Task { () -> NodeEvent? in
            for await message in subscriber.messages {
                return NodeEvent.decode(Array(message.payload.readableBytesView))
            }
            return nil
        }
        // Wait for the subscription, then push.
        for _ in 0..<100 {
            if (try await redis.send("PUBSUB", "SHARDNUMSUB", keys.nodeChannel("n9")).array?.last?.int ?? 0) > 0 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        _ = try await dispatcher.push(PushCommand(audience: .terminals(["on", "off"]), payload: [1]))
        let event = await reader.value
        #expect(event?.kind == .wake)
        #expect(event?.terminals == ["on"])
        // The event carries the entry just stored, byte for byte, so the node need not read it back.
        let stored = try await redis.send("LRANGE", keys.queue("on"), "0", "-1").array?.compactMap(\.string)
        #expect(event?.entries == stored)
        await subscriber.close()
        await redis.close()
    }

    @Test func validation() throws {
        #expect(throws: APIError.self) { try PushCommand(audience: .terminals([]), payload: []).validate(configuration) }
        #expect(throws: APIError.self) { try PushCommand(audience: .terminals(["a/b"]), payload: []).validate(configuration) }
        #expect(throws: APIError.self) { try PushCommand(audience: .terminals(["a"]), payload: [], qos: 3).validate(configuration) }
        #expect(throws: APIError.self) { try PushCommand(audience: .terminals(["a"]), payload: [], ttl: -1).validate(configuration) }
        #expect(throws: APIError.self) { try PushCommand(audience: .topic("a/#"), payload: []).validate(configuration) }
        let big = [UInt8](repeating: 0, count: configuration.maximumPayloadSize + 1)
        #expect(throws: APIError.self) { try PushCommand(audience: .broadcast, payload: big).validate(configuration) }
        try PushCommand(audience: .topic("news/x"), payload: []).validate(configuration)
        server.stop()
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
