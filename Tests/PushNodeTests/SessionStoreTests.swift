import FleetCore
import FleetTestSupport
import Logging
import RedisClient
import Testing

@testable import PushNode

/// The session store against a real redis-server: what a session writes, it reads back.
@Suite(.serialized)
struct SessionStoreTests {
    let server: RedisServer
    let node: PushNode
    let keys = FleetKeys()

    init() throws {
        server = try RedisServer()
        var configuration = PushNodeConfiguration(
            redis: server.configuration, mqttHost: "127.0.0.1", mqttPort: 0, nodeID: "n1", secret: "store-tests-secret-32-bytes-long")
        // `sent` records wait for a flush here, however slow the test runs (the tick itself
        // is tested on its own recorder below).
        configuration.sentRecordInterval = .seconds(600)
        node = PushNode(configuration: configuration, logger: Logger(label: "test"))
    }

    func store(_ terminal: String) -> RedisSessionStore { RedisSessionStore(node: node.context, terminal: terminal) }

    func entry(_ id: String, session: Bool = false) -> String {
        var message = StoredMessage(id: id, qos: 1, expiresAt: 0, topic: "push/t", payload: Array(id.utf8))
        if session { message.session = true }
        return message.encoded()
    }

    func register(_ store: some SessionStore, epoch: String, clean: Bool = false) async throws -> SessionRegistration {
        try await store.register(
            SessionRegisterRequest(epoch: epoch, connectedAt: 1, cleanStart: clean, issuedAt: "", readCount: 10, persistent: true),
            on: node.context.redis.eventLoop
        ).get()
    }

    /// Registrations of one tick share a script call, at most ``RegistrationBatcher/maximumBatch``
    /// to a call: one past two full batches takes three calls, and each registration gets its
    /// own terminal's reply.
    @Test func registrationsOfATickShareScriptCalls() async throws {
        let count = 2 * RegistrationBatcher.maximumBatch + 1
        for index in 0..<count { try await node.context.redis.send("RPUSH", keys.queue("r\(index)"), "entry-\(index)") }
        try await node.context.redis.send("CONFIG", "RESETSTAT")
        let loop = node.context.redis.eventLoop
        let batcher = node.context.registrations
        // Submitted from the connection's event loop in one task: all in the same tick.
        let futures = try await loop.submit {
            (0..<count).map { index in
                batcher.register(
                    .init(
                        terminal: "r\(index)", epoch: "e\(index)", connectedAt: 1, cleanStart: false, issuedAt: "", readCount: 10,
                        persistent: true),
                    on: loop)
            }
        }.get()
        for (index, future) in futures.enumerated() {
            let registration = try await future.get()
            #expect(registration.queue == ["entry-\(index)"])
            let route = try await node.context.redis.send("GET", keys.route("r\(index)")).string.flatMap(Route.init(decoding:))
            #expect(route?.epoch == "e\(index)")
        }
        let stats = try await node.context.redis.send("INFO", "commandstats").string ?? ""
        #expect(stats.contains("cmdstat_evalsha:calls=3,"))
    }

    @Test func storedEntriesAndSentPacketIDsReadBackAndLeave() async throws {
        let t = store("t1")
        let first = try await register(t, epoch: "e1")
        #expect(first.oldNode == "" && first.queue.isEmpty && !first.sessionExisted)
        try await t.write([
            .keep(entry: entry("m1"), capacity: 100, lifetimeMillis: 60_000),
            .keep(entry: entry("m2"), capacity: 100, lifetimeMillis: 60_000),
            .recordSent(messageID: "m1", packetID: 7),
        ]).get()
        // The `sent` record waits for its tick (the acknowledgement usually comes first); a
        // connection that stops writes its records at once.
        #expect(try await t.read(StoredBacklog.Read(start: 0, count: 10, anchor: nil, withSent: true)).get().sent == [:])
        node.context.sent.flush(terminal: "t1")
        let read = try await t.read(StoredBacklog.Read(start: 0, count: 10, anchor: nil, withSent: true)).get()
        #expect(read.entries == [entry("m1"), entry("m2")])
        #expect(read.sent == ["m1": 7])
        // The second entry alone, without the sent hash.
        let tail = try await t.read(StoredBacklog.Read(start: 1, count: 1, anchor: nil, withSent: false)).get()
        #expect(tail.entries == [entry("m2")] && tail.sent == nil)
        try await t.write([.removeEntry(entry("m1")), .forgetSent(messageID: "m1")]).get()
        let after = try await t.read(StoredBacklog.Read(start: 0, count: 10, anchor: nil, withSent: true)).get()
        #expect(after.entries == [entry("m2")] && after.sent == [:])
        // The list keeps at most `capacity`, oldest out first.
        try await t.write((3...6).map { .keep(entry: entry("m\($0)"), capacity: 3, lifetimeMillis: 60_000) }).get()
        #expect(
            try await t.read(StoredBacklog.Read(start: 0, count: 10, anchor: nil, withSent: false)).get().entries
                == (4...6).map { entry("m\($0)") })
    }

    @Test func qos2ExchangesAndSubscriptionsComeBackWithTheSession() async throws {
        let t = store("t2")
        _ = try await register(t, epoch: "e1")
        try await t.write([
            .awaitRelease(packetID: 3), .awaitRelease(packetID: 4), .released(packetID: 3), .awaitCompletion(packetID: 9),
            .recordSubscriptions(["news/#": "1", "chat/+": "2"]), .recordSubscriptions(["x": "0"]), .forgetSubscriptions(["x"]),
        ]).get()
        #expect(try await t.unregister(epoch: "e1", expiry: 60).get())
        let again = try await register(t, epoch: "e2")
        #expect(again.sessionExisted)
        #expect(again.released == [4])
        #expect(again.releasing == [9])
        #expect(again.subscriptions == ["news/#": "1", "chat/+": "2"])
        try await t.write([.completed(packetID: 9)]).get()
        #expect(try await t.reload(again, window: 10).get().releasing.isEmpty)
    }

    @Test func aLateUnregisterLeavesTheNewerConnectionsRouteAndAKickReportsListeners() async throws {
        let t = store("t3")
        _ = try await register(t, epoch: "e1")
        let second = try await register(t, epoch: "e2")
        #expect(second.oldNode == "n1" && second.oldEpoch == "e1")
        #expect(try await t.unregister(epoch: "e1", expiry: 0).get() == false)
        #expect(try await node.context.redis.send("GET", keys.route("t3")).string.flatMap(Route.init(decoding:))?.epoch == "e2")
        #expect(try await t.kick(on: "nobody", NodeEvent(kind: .kick, terminals: ["t3"], epoch: "e2")).get() == 0)
    }

    @Test func retainedMessagesByExactFilterOrWholeForWildcards() async throws {
        let redis = node.context.redis
        let a = StoredMessage(id: "r1", qos: 0, expiresAt: 0, topic: "r/a", payload: [1])
        let b = StoredMessage(id: "r2", qos: 0, expiresAt: 0, topic: "r/b", payload: [2])
        try await redis.send("HSET", keys.retained, "r/a", a.encoded(), "r/b", b.encoded(), "r/bad", "not json")
        let t = store("t4")
        #expect(try await t.retained(for: ["r/a", "r/none"]).get() == [a])
        #expect(Set(try await t.retained(for: ["r/+"]).get().map(\.id)) == ["r1", "r2"])
    }

    @Test func aCleanStartDropsWhatWasKeptForSubscriptionsAndKeepsPushes() async throws {
        let t = store("t5")
        _ = try await register(t, epoch: "e1")
        // A push whose topic carries the marker's text is a push all the same.
        let lookalike = StoredMessage(id: "p2", qos: 1, expiresAt: 0, topic: "a/\"session\":true", payload: [1]).encoded()
        try await t.write([
            .keep(entry: entry("p1"), capacity: 100, lifetimeMillis: 60_000),
            .keep(entry: entry("s1", session: true), capacity: 100, lifetimeMillis: 60_000),
            .keep(entry: lookalike, capacity: 100, lifetimeMillis: 60_000),
            .keep(entry: "not json", capacity: 100, lifetimeMillis: 60_000),
            .keep(entry: entry("s2", session: true), capacity: 100, lifetimeMillis: 60_000),
        ]).get()
        let clean = try await register(t, epoch: "e2", clean: true)
        #expect(clean.queue == [entry("p1"), lookalike, "not json"])
    }

    @Test func aSentRecordAcknowledgedWithinItsTickNeverReachesRedis() async throws {
        let t = store("t6")
        _ = try await register(t, epoch: "e1")
        try await t.write([.recordSent(messageID: "q1", packetID: 3), .recordSent(messageID: "q2", packetID: 4)]).get()
        #expect(node.context.sent.pendingCount == 2)
        // q1 acknowledged in time: no command at all for its record.
        #expect(t.commands(for: [.forgetSent(messageID: "q1")]).isEmpty)
        // q2's connection stops: its record is written at once.
        node.context.sent.flush(terminal: "t6")
        #expect(node.context.sent.pendingCount == 0)
        let read = try await t.read(StoredBacklog.Read(start: 0, count: 10, anchor: nil, withSent: true)).get()
        #expect(read.sent == ["q2": 4])
        // Written, so its acknowledgement removes it.
        #expect(t.commands(for: [.forgetSent(messageID: "q2")]).map(\.name) == ["HDEL"])
    }

    @Test func aSentRecordStillInFlightAfterItsTickIsWritten() async throws {
        let recorder = SentRecorder(redis: node.context.redis, keys: keys, interval: .milliseconds(20))
        recorder.record(terminal: "t7", id: "q3", packetID: 5)
        let deadline = ContinuousClock.now + .seconds(10)
        var written: String?
        while written == nil, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            written = try await node.context.redis.send("HGET", keys.sent("t7"), "q3").string
        }
        #expect(written == "5")
        #expect(recorder.pendingCount == 0)
        // Written: forgetting it leaves the HDEL to the caller.
        #expect(!recorder.forget(terminal: "t7", id: "q3"))
    }
}
