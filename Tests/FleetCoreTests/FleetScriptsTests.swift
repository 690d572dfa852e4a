import FleetCore
import FleetRedis
import FleetTestSupport
import Logging
import NIOPosix
import RedisClient
import Testing

/// The Lua scripts against a real redis-server.
@Suite(.serialized)
struct FleetScriptsTests {
    let server: RedisServer
    let redis: RedisConnection
    let keys = FleetKeys()

    init() throws {
        server = try RedisServer()
        redis = server.connection(scripts: FleetScripts.all)
    }

    func register(_ terminal: String, node: String, epoch: String, clean: Bool = true, issuedAt: String = "") async throws -> [RedisReply] {
        let registration = FleetScripts.Registration(
            terminal: terminal, epoch: epoch, connectedAt: 1, cleanStart: clean, issuedAt: issuedAt, readCount: 10, persistent: !clean)
        let reply = try await redis.send(FleetScripts.registerCommand([registration], node: node, keys: keys))
        #expect(reply.array?.count == 1)
        return reply.array?.first?.array ?? []
    }

    func unregister(_ terminal: String, epoch: String, expiry: Int = 0) async throws -> Int64? {
        try await redis.send(
            FleetScripts.unregister.command(
                keys: [
                    keys.route(terminal), keys.session(terminal), keys.subscriptions(terminal), keys.released(terminal),
                    keys.releasing(terminal),
                ],
                arguments: [epoch, String(expiry)])
        ).int
    }

    @Test func registrationAndCompareAndDelete() async throws {
        let first = try await register("t1", node: "n1", epoch: "e1")
        #expect(first.first?.string == "ok")
        #expect(first[1].string == "")  // no previous route
        #expect(try await redis.send("GET", keys.route("t1")).string.flatMap(Route.init(decoding:))?.node == "n1")

        // Takeover on another node: the script reports the previous owner.
        let second = try await register("t1", node: "n2", epoch: "e2")
        #expect(second[1].string == "n1")
        #expect(second[2].string == "e1")

        // The old connection's late disconnect must not erase the new route.
        #expect(try await unregister("t1", epoch: "e1") == 0)
        #expect(try await redis.send("GET", keys.route("t1")).string.flatMap(Route.init(decoding:))?.node == "n2")
        #expect(try await unregister("t1", epoch: "e2") == 1)
        #expect(try await redis.send("EXISTS", keys.route("t1")).int == 0)
        await redis.close()
    }

    @Test func registrationReturnsStoredMessagesAndSessionState() async throws {
        try await redis.send("RPUSH", keys.queue("t2"), "a", "b")
        try await redis.send("HSET", keys.sent("t2"), "m-a", "7")
        try await redis.send("HSET", keys.subscriptions("t2"), "news/#", "1")
        let first = try await register("t2", node: "n1", epoch: "e1", clean: false)
        #expect(first[3].int == 0)  // no session yet
        #expect(first[5].array?.compactMap(\.string) == ["a", "b"])
        #expect(first[6].pairs == ["m-a": "7"])  // sent, unacknowledged: message id -> packet id
        let again = try await register("t2", node: "n1", epoch: "e2", clean: false)
        #expect(again[3].int == 1)  // session present
        #expect(again[4].array?.compactMap(\.string) == ["news/#", "1"])
        // A message stored for the session's subscription, and one pushed to the terminal.
        let forSession = StoredMessage(id: "s1", qos: 1, expiresAt: 0, topic: "news/a", payload: [1])
        var marked = forSession
        marked.session = true
        try await redis.send("RPUSH", keys.queue("t2"), marked.encoded())
        #expect(try await unregister("t2", epoch: "e2", expiry: 100) == 1)
        #expect(try await redis.send("TTL", keys.session("t2")).int ?? 0 > 90)
        let clean = try await register("t2", node: "n1", epoch: "e3", clean: true)
        #expect(clean[4].array?.isEmpty == true)  // clean start drops subscriptions
        #expect(clean[7].array?.compactMap(\.string) == ["news/#"])  // ...and reports them
        #expect(clean[5].array?.compactMap(\.string) == ["a", "b"])  // ...and the session's messages, never the terminal's
        #expect(try await unregister("t2", epoch: "e3") == 1)
        #expect(try await redis.send("EXISTS", keys.session("t2")).int == 0)
        await redis.close()
    }

    /// A node's registrations of one tick go in one call: each gets its own reply, in order,
    /// and a terminal that cannot be registered (revoked; a key of the wrong type) fails alone.
    @Test func registrationsOfATickShareOneCallAndFailAlone() async throws {
        try await redis.send("SET", keys.revoked("b-revoked"), "5000")
        try await redis.send("HSET", keys.route("b-broken"), "not", "a string")
        try await redis.send("RPUSH", keys.queue("b-2"), "waiting")
        let terminals = (0..<6).map { "b-\($0)" }
        var registrations = terminals.map {
            FleetScripts.Registration(
                terminal: $0, epoch: "e-\($0)", connectedAt: 7, cleanStart: false, issuedAt: "4000", readCount: 10, persistent: true)
        }
        registrations.insert(
            .init(terminal: "b-revoked", epoch: "e", connectedAt: 7, cleanStart: false, issuedAt: "4000", readCount: 10, persistent: true),
            at: 1)
        registrations.insert(
            .init(terminal: "b-broken", epoch: "e", connectedAt: 7, cleanStart: true, issuedAt: "", readCount: 10, persistent: false),
            at: 3)
        let replies = try await redis.send(FleetScripts.registerCommand(registrations, node: "n1", keys: keys)).array ?? []
        #expect(replies.count == registrations.count)
        for (registration, reply) in zip(registrations, replies) {
            let status = reply.array?.first?.string
            switch registration.terminal {
            case "b-revoked": #expect(status == "revoked")
            case "b-broken":
                #expect(status == "error")
                #expect(reply.array?.dropFirst().first?.string?.contains("WRONGTYPE") == true)
            default:
                #expect(status == "ok", "\(registration.terminal)")
                let route = try await redis.send("GET", keys.route(registration.terminal)).string.flatMap(Route.init(decoding:))
                #expect(route?.epoch == registration.epoch)
            }
        }
        #expect(replies[4].array?[5].array?.compactMap(\.string) == ["waiting"])  // b-2's list
        #expect(try await redis.send("EXISTS", keys.route("b-revoked")).int == 0)
        await redis.close()
    }

    /// A clean start reads the whole list once to drop the entries stored for the old session's
    /// subscriptions; the head it returns is the first `readCount` of those that stay, also
    /// when the list is longer than that.
    @Test func aCleanStartReturnsTheHeadOfWhatStays() async throws {
        var entries: [String] = []
        for index in 0..<25 {
            var message = StoredMessage(id: "m\(index)", qos: 1, expiresAt: 0, topic: "push/c", payload: [UInt8(index)])
            message.session = index % 3 == 0
            entries.append(message.encoded())
        }
        try await redis.send(RedisCommand("RPUSH", [keys.queue("c")] + entries))
        let reply = try await register("c", node: "n1", epoch: "e1", clean: true)
        #expect(reply.first?.string == "ok")
        let kept = entries.enumerated().filter { $0.offset % 3 != 0 }.map(\.element)
        #expect(reply[5].array?.compactMap(\.string) == Array(kept.prefix(10)))
        #expect(try await redis.send("LRANGE", keys.queue("c"), "0", "-1").array?.compactMap(\.string) == kept)
        await redis.close()
    }

    @Test func indexUpdatesAnnounceOnlyChanges() async throws {
        let subscriber = RedisSubscriber(
            configuration: server.configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        let channel = keys.indexChannel
        subscriber.subscribe([channel])
        subscriber.start()
        let deadline = ContinuousClock.now + .seconds(10)
        while !(await subscriber.isConnected) {
            guard ContinuousClock.now < deadline else { throw RedisError(.unavailable, "the subscriber did not connect within 10 s") }
            try await Task.sleep(for: .milliseconds(10))
        }
        try await Task.sleep(for: .milliseconds(50))
        func update(_ owner: String, _ op: String, _ filters: String...) async throws -> Int64? {
            try await redis.send(
                FleetScripts.indexUpdate.command(keys: [keys.index(owner)], arguments: [channel, owner, op] + filters)
            ).int
        }
        #expect(try await update("n1", "+", "a/#", "b") == 2)
        #expect(try await update("n1", "+", "a/#") == 0)  // already there: nothing announced
        #expect(try await update("n1", "-", "b", "zzz") == 1)
        #expect(try await redis.send("SMEMBERS", keys.index("n1")).array?.compactMap(\.string) == ["a/#"])
        #expect(try await update("n1", "=") == 0)
        #expect(try await redis.send("EXISTS", keys.index("n1")).int == 0)
        var announced: [IndexChange] = []
        for await message in subscriber.messages {
            announced.append(try #require(IndexChange.decode(Array(message.payload.readableBytesView))))
            if announced.count == 3 { break }
        }
        #expect(
            announced == [
                IndexChange(owner: "n1", operation: .add, filters: ["a/#", "b"]),
                IndexChange(owner: "n1", operation: .remove, filters: ["b"]),
                IndexChange(owner: "n1", operation: .reset, filters: []),
            ])
        await subscriber.close()
        await redis.close()
    }

    @Test func storedSubscribersAndOfflineStorage() async throws {
        func stored(_ terminal: String, _ op: String, _ filters: [String]) async throws -> Int64? {
            try await redis.send(
                FleetScripts.storedSubscriptions.command(
                    keys: [keys.storedIndex(0)] + filters.map(keys.storedSubscribers),
                    arguments: [keys.indexChannel, terminal, op] + filters)
            ).int
        }
        #expect(try await stored("p1", "+", ["x/+", "y"]) == 2)
        #expect(try await stored("p2", "+", ["x/+"]) == 0)  // the filter is already indexed
        #expect(try await stored("p1", "-", ["x/+", "y"]) == 1)  // y had only p1; x/+ still has p2
        #expect(try await redis.send("SMEMBERS", keys.storedIndex(0)).array?.compactMap(\.string) == ["x/+"])

        func store(_ terminal: String) async throws -> RedisReply {
            try await redis.send(
                FleetScripts.storeForSubscriber.command(
                    keys: [keys.session(terminal), keys.route(terminal), keys.queue(terminal)],
                    arguments: ["m", "10", "60000", "n1", "n3"])
            )
        }
        #expect(try await store("p2").int == -1)  // no session
        try await redis.send("SET", keys.session("p2"), "1")
        try await redis.send("SET", keys.route("p2"), Route(node: "n1", epoch: "e", connectedAt: 0).encoded)
        #expect(try await store("p2").int == 0)  // connected to a node the message reached: delivered live
        try await redis.send("SET", keys.route("p2"), Route(node: "n2", epoch: "e", connectedAt: 0).encoded)
        #expect(try await store("p2").string == "n2")  // its node did not get the message: stored, wake n2
        try await redis.send("DEL", keys.route("p2"))
        #expect(try await store("p2").int == 1)  // not connected
        #expect(try await redis.send("LRANGE", keys.queue("p2"), "0", "-1").array?.compactMap(\.string) == ["m", "m"])
        await redis.close()
    }

    @Test func revokedCredentialsAreRefused() async throws {
        try await redis.send("SET", keys.revoked("t3"), "5000")
        #expect(try await register("t3", node: "n1", epoch: "e1", issuedAt: "4000").first?.string == "revoked")
        #expect(try await register("t3", node: "n1", epoch: "e1", issuedAt: "5000").first?.string == "revoked")
        #expect(try await register("t3", node: "n1", epoch: "e1", issuedAt: "5001").first?.string == "ok")
        #expect(try await register("t3", node: "n1", epoch: "e1", issuedAt: "").first?.string == "ok")  // anonymous
        await redis.close()
    }

    @Test func offlineListCapAndExpiry() async throws {
        let queue = keys.queue("t4")
        var dropped: [String] = []
        for index in 1...5 {
            let reply = try await redis.send(FleetScripts.enqueue.command(keys: [queue], arguments: ["m\(index)", "3", "60000"]))
            dropped += reply.array?.compactMap(\.string) ?? []
        }
        #expect(dropped == ["m1", "m2"])
        #expect(try await redis.send("LRANGE", queue, "0", "-1").array?.compactMap(\.string) == ["m3", "m4", "m5"])
        let ttl = try await redis.send("PTTL", queue).int ?? 0
        #expect(ttl > 50_000 && ttl <= 60_000)
        // A shorter ttl never shortens the list's life; a longer one extends it.
        _ = try await redis.send(FleetScripts.enqueue.command(keys: [queue], arguments: ["m6", "3", "1000"]))
        #expect((try await redis.send("PTTL", queue).int ?? 0) > 50_000)
        _ = try await redis.send(FleetScripts.enqueue.command(keys: [queue], arguments: ["m7", "3", "120000"]))
        #expect((try await redis.send("PTTL", queue).int ?? 0) > 100_000)
        // The key itself expires.
        _ = try await redis.send(FleetScripts.enqueue.command(keys: [keys.queue("t5")], arguments: ["x", "3", "100"]))
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await redis.send("EXISTS", keys.queue("t5")).int == 0)
        await redis.close()
    }

    @Test func aCollapseKeyReplacesTheWaitingEntryButNotOneInFlightOrGone() async throws {
        let terminal = "tc"
        func entry(_ id: String, _ key: String) -> String {
            var message = StoredMessage(id: id, qos: 1, expiresAt: 1, topic: "push/tc", payload: Array(id.utf8))
            message.collapse = key
            return message.encoded()
        }
        func store(_ id: String, _ key: String, cap: Int = 3, dedupe: Bool = false) async throws -> [String] {
            let reply = try await redis.send(
                FleetScripts.storeCollapsing.command(
                    keys: [keys.queue(terminal), keys.route(terminal), keys.collapse(terminal), keys.sent(terminal)],
                    arguments: [entry(id, key), String(cap), "60000", dedupe ? "1" : "0", key]))
            return reply.array?.compactMap(\.string) ?? []
        }
        func list() async throws -> [String] {
            (try await redis.send("LRANGE", keys.queue(terminal), "0", "-1").array ?? []).compactMap(\.string).compactMap {
                StoredMessage.decode($0)?.id
            }
        }
        #expect(try await store("m1", "a") == ["", ""])
        #expect(try await store("m2", "b") == ["", ""])
        // m1 waits: replaced, and the reply says which entry went.
        #expect(try await store("m3", "a") == ["", entry("m1", "a")])
        #expect(try await list() == ["m2", "m3"])
        // m2 is in flight (sent, not acknowledged): it stays, and m4 goes behind it.
        _ = try await redis.send("HSET", keys.sent(terminal), "m2", "7")
        #expect(try await store("m4", "b") == ["", ""])
        #expect(try await list() == ["m2", "m3", "m4"])
        // m3 was delivered and removed: nothing to replace.
        _ = try await redis.send("LREM", keys.queue(terminal), "1", entry("m3", "a"))
        #expect(try await store("m5", "a") == ["", ""])
        // A retry of m5 is not stored twice; one past the cap pushes the oldest out.
        #expect(try await store("m5", "a", dedupe: true) == ["", ""])
        #expect(try await store("m6", "c") == ["", "", entry("m2", "b")])
        #expect(try await list() == ["m4", "m5", "m6"])
        let ttl = try await redis.send("PTTL", keys.collapse(terminal)).int ?? 0
        #expect(ttl > 50_000 && ttl <= 60_000, "the collapse hash lives as long as the list")
        await redis.close()
    }

    @Test func aWithdrawnEntryIsFoundByItsIdUnlessInFlight() async throws {
        let queue = keys.queue("tw")
        func entry(_ id: String) -> String { StoredMessage(id: id, qos: 1, expiresAt: 1, topic: "push/tw", payload: [1]).encoded() }
        for id in ["a-1", "a-10", "a-2"] { _ = try await redis.send("RPUSH", queue, entry(id)) }
        func withdraw(_ id: String) async throws -> RedisReply {
            try await redis.send(FleetScripts.withdraw.command(keys: [queue, keys.sent("tw")], arguments: [id]))
        }
        // "a-1" is not "a-10": the whole id is matched.
        #expect(try await withdraw("a-1").string == entry("a-1"))
        #expect(try await withdraw("a-1").string == "", "gone")
        _ = try await redis.send("HSET", keys.sent("tw"), "a-2", "3")
        #expect(try await withdraw("a-2") == .integer(0), "in flight: left")
        #expect(try await redis.send("LRANGE", queue, "0", "-1").array?.compactMap(\.string) == [entry("a-10"), entry("a-2")])
        await redis.close()
    }

    @Test func scheduledPushesAreBoundedAndTakenOnceDueForALease() async throws {
        let scriptKeys = [keys.scheduledDue, keys.scheduledPushes]
        func schedule(_ id: String, due: Int) async throws -> Int64? {
            try await redis.send(FleetScripts.schedule.command(keys: scriptKeys, arguments: [id, String(due), "{\"p\":\"\(id)\"}", "2"]))
                .int
        }
        func claim(now: Int) async throws -> [String] {
            try await redis.send(FleetScripts.claimScheduled.command(keys: scriptKeys, arguments: [String(now), "1000", "10"])).array?
                .compactMap(\.string) ?? []
        }
        #expect(try await schedule("s1", due: 100) == 1)
        #expect(try await schedule("s2", due: 200) == 1)
        #expect(try await schedule("s3", due: 50) == 0, "one past the bound of 2")
        #expect(try await claim(now: 99) == [])
        #expect(try await claim(now: 150) == ["s1", "{\"p\":\"s1\"}"])
        #expect(try await claim(now: 160) == [], "taken: a lease ahead")
        // A push cancelled (its body gone) is dropped from the due set when it comes up.
        _ = try await redis.send("HDEL", keys.scheduledPushes, "s2")
        #expect(try await claim(now: 300) == [])
        #expect(try await redis.send("ZSCORE", keys.scheduledDue, "s2").isNull)
        // The lease ran out (its control node died): due again.
        #expect(try await claim(now: 1_200) == ["s1", "{\"p\":\"s1\"}"])
        await redis.close()
    }

    @Test func statesNeverMoveBackAndTheCountsFollowFromThem() async throws {
        typealias Field = MessageStatusField
        let id = FleetClock.newMessageID()
        let bucket = keys.statusBucket(StatusBucket(messageID: id))
        // Written in any order, by any writer, more than once: each state is a field of its own.
        var writes = StatusWrites()
        writes.record(.acknowledged, of: id, terminal: "a", at: 10)
        writes.record(.delivered, of: id, terminal: "a", at: 20)  // late: does not move it back
        writes.record(.delivered, of: id, terminal: "b", at: 10)
        writes.record(.expired, of: id, terminal: "c", at: 30)
        writes.record(.acknowledged, of: id, terminal: "c", at: 40)  // after expiry: the first final stands
        writes.record(.dropped, of: id, terminal: "e", at: 5)
        for command in writes.commands(keys: keys) { try await redis.send(command) }
        var states: [MessageState] = []
        for terminal in ["a", "b", "c", "d", "e"] {
            let fields = Field.recordedStates.map { Field.state($0, of: id, terminal: terminal) }
            let values = try await redis.send(RedisCommand("HMGET", [bucket] + fields)).array ?? []
            states.append(Field.state(of: values.map(\.string)))
        }
        #expect(states == [.acknowledged, .delivered, .expired, .queued, .dropped])
        #expect(
            Field.counts(ofTargets: states) == [
                "queued": 1, "delivered": 2, "acknowledged": 1, "expired": 1, "dropped": 1, "replaced": 0, "withdrawn": 0,
            ])
        await redis.close()
    }

    @Test func statusBucketsComeFromTheMessageIdAndExpireOnce() async throws {
        // A control node's id (hex ms) and a command stream entry id (decimal ms) of the same
        // second share it; the shard comes from the id.
        let ms: Int64 = 1_764_470_000_123
        let apiID = String(ms, radix: 16) + "-00000000deadbeef"
        #expect(StatusBucket(messageID: apiID).second == 1_764_470_000)
        #expect(StatusBucket(messageID: "\(ms)-7").second == 1_764_470_000)
        #expect(StatusBucket(messageID: "1-1").second == 0)
        #expect(StatusBucket(messageID: "not an id").second == 0)
        let shards = Set((0..<200).map { StatusBucket(messageID: "\(ms)-\($0)").shard })
        #expect(shards == Set(0..<StatusBucket.shards))
        // A batch's new ids share a shard (one HSET per second for the batch); batches go
        // round the shards; no id repeats.
        var batchShards: [Int] = []
        var seen = Set<String>()
        for _ in 0..<8 {
            let ids = FleetClock.newMessageIDs(500)
            let shards = Set(ids.map { StatusBucket(messageID: $0).shard })
            #expect(shards.count == 1)
            batchShards += shards
            seen.formUnion(ids)
        }
        #expect(Set(batchShards) == Set(0..<StatusBucket.shards))
        #expect(seen.count == 8 * 500)
        // An id from the distant past still gets the full retention from now.
        #expect(StatusBucket(messageID: "1-1").expiresAt(retention: 100, nowSeconds: 5000) == 5100)
        #expect(StatusBucket(second: 6000, shard: 0).expiresAt(retention: 100, nowSeconds: 5000) == 6101)

        // The expiry goes once per bucket in a while, not with every write.
        let bucket = StatusBucket(messageID: "\(ms)-1")
        let expiry = StatusBucketExpiry(.retention(600))
        #expect(expiry.commands(for: [bucket], keys: keys, nowSeconds: 1000).count == 1)
        #expect(expiry.commands(for: [bucket, bucket], keys: keys, nowSeconds: 1005).isEmpty)
        #expect(expiry.commands(for: [bucket], keys: keys, nowSeconds: 1000 + 10).count == 1)
        expiry.reset()
        #expect(expiry.commands(for: [bucket], keys: keys, nowSeconds: 1011).count == 1)
        // A push node's EXPIRE NX leaves a bucket's expiry alone and gives one to a bucket a
        // late state created anew.
        let key = keys.statusBucket(bucket)
        try await redis.send("HSET", key, "f", "1")
        try await redis.send("EXPIRE", key, "5000")
        for command in StatusBucketExpiry(.ifNone(60)).commands(for: [bucket], keys: keys) { try await redis.send(command) }
        #expect(try await redis.send("TTL", key).int ?? 0 > 4000)
        try await redis.send("PERSIST", key)
        for command in StatusBucketExpiry(.ifNone(60)).commands(for: [bucket], keys: keys) { try await redis.send(command) }
        #expect(try await redis.send("TTL", key).int == 60)
        await redis.close()
    }

    @Test func idleConsumersAreRemovedOnlyWhenTheyHoldNothing() async throws {
        let stream = "pushfleet:push"
        try await redis.send("XGROUP", "CREATE", stream, "control", "0", "MKSTREAM")
        try await redis.send("XADD", stream, "*", "to", "t", "payload", "x")
        // "holder" reads the entry and keeps it pending; "empty" and "me" hold nothing.
        try await redis.send("XREADGROUP", "GROUP", "control", "holder", "COUNT", "1", "STREAMS", stream, ">")
        for consumer in ["empty", "me"] { try await redis.send("XGROUP", "CREATECONSUMER", stream, "control", consumer) }
        try await Task.sleep(for: .milliseconds(20))
        // Not idle long enough: none.
        #expect(try await FleetScripts.removeIdleConsumers(redis: redis, stream: stream, group: "control", keeping: "me").isEmpty)
        #expect(
            try await FleetScripts.removeIdleConsumers(redis: redis, stream: stream, group: "control", keeping: "me", idleMillis: 5) == [
                "empty"
            ])
        let left = try await redis.send("XINFO", "CONSUMERS", stream, "control").array?.compactMap { $0.pairs?["name"] }
        #expect(Set(left ?? []) == ["holder", "me"])
        // The entry "holder" read is still pending, to be claimed.
        #expect(try await redis.send("XPENDING", stream, "control").array?.first?.int == 1)
    }

    @Test func statusEventsAreOneEntryPerWriteInTimeOrderAndOnlyWhenOn() {
        var writes = StatusWrites()
        writes.record(.acknowledged, of: "m-1", terminal: "t|\"odd\"", at: 20)
        writes.record(.replaced, of: "m-2", terminal: "t2", at: 10)
        writes.set(MessageStatusField.complete("m-1"), "1", of: "m-1")
        writes.set(MessageStatusField.cancelled("m-2"), "5", of: "m-2")
        #expect(writes.eventCommands(keys: keys, length: 0).isEmpty)
        let commands = writes.eventCommands(keys: keys, length: 500).map { $0.arguments.map { String(decoding: $0, as: UTF8.self) } }
        #expect(
            commands == [
                [
                    "XADD", "pushfleet:events", "MAXLEN", "~", "500", "*", "events",
                    #"[{"at":10,"message":"m-2","state":"replaced","terminal":"t2"},{"at":20,"message":"m-1","state":"acknowledged","terminal":"t|\"odd\""}]"#,
                ]
            ])
        #expect(
            StatusEvent.decode(commands[0][7]) == [
                StatusEvent(message: "m-2", terminal: "t2", state: .replaced, at: 10),
                StatusEvent(message: "m-1", terminal: "t|\"odd\"", state: .acknowledged, at: 20),
            ])
        #expect(MessageStatusField.parseState(MessageStatusField.reach("m-1")) == nil)
    }

    @Test func aWriteOfMoreEventsThanAnEntryHoldsAddsSeveralEntriesInOrder() {
        for count in [StatusEvent.maximumPerEntry, StatusEvent.maximumPerEntry + 1, 3 * StatusEvent.maximumPerEntry + 7] {
            var writes = StatusWrites()
            for index in 0..<count { writes.record(.acknowledged, of: "m-\(index)", terminal: "t", at: Int64(1000 + index)) }
            let entries = writes.eventCommands(keys: keys, length: 10).map { String(decoding: $0.arguments[7], as: UTF8.self) }
            #expect(entries.count == (count + StatusEvent.maximumPerEntry - 1) / StatusEvent.maximumPerEntry)
            let events = entries.flatMap { StatusEvent.decode($0) ?? [] }
            #expect(events.map(\.at) == (0..<count).map { Int64(1000 + $0) })
            #expect(entries.allSatisfy { (StatusEvent.decode($0)?.count ?? 0) <= StatusEvent.maximumPerEntry })
        }
    }

    @Test func statusEventEntriesThatAreNotEventArraysAreNotRead() {
        for text in [
            "", "[", "{}", "[{}]", #"[{"at":1,"message":"m","state":"later","terminal":"t"}]"#,
            #"[{"at":"1","message":"m","state":"dropped","terminal":"t"}]"#, #"[] x"#,
        ] {
            #expect(StatusEvent.decode(text) == nil, "\(text)")
        }
        #expect(StatusEvent.decode("[]") == [])
        #expect(
            StatusEvent.decode(#" [ {"terminal":"t","extra":{"a":[1]},"state":"dropped","message":"m","at":7} ] "#)
                == [StatusEvent(message: "m", terminal: "t", state: .dropped, at: 7)])
    }

    @Test func routesRoundTrip() {
        let route = Route(node: "n-1.a:b@c", epoch: "mjz0c1x2abcd", connectedAt: 1_764_470_000_123)
        #expect(Route(decoding: route.encoded) == route)
        #expect(Route.node(in: route.encoded) == "n-1.a:b@c")
        #expect(Route(decoding: "n1|e1") == nil)
        #expect(Route(decoding: "|e|1") == nil)
        #expect(Route.node(in: "|e|1") == nil)
    }

    @Test func statusRecordsRoundTrip() {
        let record = MessageStatusRecord(kind: "unicast", qos: 1, ttl: 60, createdAt: 5, expiresAt: 60_005, targets: ["a:1", "b.c", "d-e"])
        #expect(MessageStatusRecord(decoding: record.encoded) == record)
        let topic = MessageStatusRecord(kind: "topic", qos: 0, ttl: 0, createdAt: 5, expiresAt: 0)
        #expect(MessageStatusRecord(decoding: topic.encoded) == topic)
        #expect(MessageStatusRecord(decoding: "unicast|1|x|5|0|") == nil)
        #expect(MessageStatusRecord(decoding: "") == nil)
    }

    @Test func retainedMessagesKeepTheirByteCountWithinBounds() async throws {
        func retain(_ topic: String, _ entry: String, most: Int = 2, bytes: Int = 10) async throws -> Int64? {
            try await redis.send(
                FleetScripts.retain.command(
                    keys: [keys.retained, keys.retainedBytes], arguments: [topic, entry, String(most), String(bytes)])
            ).int
        }
        func counted() async throws -> Int64? { try await redis.send("GET", keys.retainedBytes).string.flatMap { Int64($0) } }
        #expect(try await retain("a", "1234") == 1)
        #expect(try await retain("b", "12") == 1)
        #expect(try await counted() == 6)
        #expect(try await retain("c", "1") == 0)  // a third message: one past the count
        #expect(try await retain("a", "123456789") == 0)  // 9 + 2 bytes: one past the bytes
        #expect(try await retain("a", "12345678") == 1)  // 8 + 2: at the bound, replacing
        #expect(try await counted() == 10)
        #expect(try await retain("a", "", most: 2, bytes: 10) == 1)  // a delete always goes through
        #expect(try await counted() == 2)
        #expect(try await retain("c", "1", most: 0, bytes: 0) == 1)  // no bounds
        #expect(try await redis.send("HLEN", keys.retained).int == 2)
        #expect(try await counted() == 3)
        await redis.close()
    }
}
