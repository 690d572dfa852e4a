import FleetCore
import FleetRedis
import FleetTestSupport
import RedisClient
import Testing

/// The delayed-will scripts against a real redis-server.
@Suite(.serialized)
struct WillScriptsTests {
    let server: RedisServer
    let redis: RedisConnection
    let keys = FleetKeys()

    init() throws {
        server = try RedisServer()
        redis = server.connection(scripts: FleetScripts.all)
    }

    func keep(_ terminal: String, epoch: String, entry: String) async throws -> Int64? {
        try await redis.send(
            FleetScripts.keepWill.command(keys: [keys.route(terminal), keys.will(terminal)], arguments: [epoch, entry, "60000"])
        ).int
    }

    func schedule(_ terminal: String, delayMillis: Int, max: Int) async throws -> Int64? {
        try await redis.send(
            FleetScripts.scheduleWill.command(keys: [keys.wills], arguments: [terminal, String(delayMillis), String(max)])
        )
        .int
    }

    func claim(limit: Int = 100, leaseMillis: Int = 30_000) async throws -> [String] {
        try await redis.send(FleetScripts.claimWills.command(keys: [keys.wills], arguments: [String(limit), String(leaseMillis)]))
            .array?.compactMap(\.string) ?? []
    }

    @Test func aWillIsKeptOnlyWhileNoNewerConnectionRegistered() async throws {
        // No route (the connection's own unregister ran first), or its own epoch: kept.
        #expect(try await keep("w1", epoch: "e1", entry: "will-1") == 1)
        try await redis.send("SET", keys.route("w1"), Route(node: "n1", epoch: "e1", connectedAt: 0).encoded)
        #expect(try await keep("w1", epoch: "e1", entry: "will-1b") == 1)
        #expect(try await redis.send("GET", keys.will("w1")).string == "will-1b")
        #expect(try await redis.send("PTTL", keys.will("w1")).int ?? 0 > 50_000)
        // A newer connection registered: the old connection's will is not kept.
        try await redis.send("SET", keys.route("w1"), Route(node: "n1", epoch: "e2", connectedAt: 0).encoded)
        #expect(try await keep("w1", epoch: "e1", entry: "will-late") == 0)
        #expect(try await redis.send("GET", keys.will("w1")).string == "will-1b")
        await redis.close()
    }

    @Test func theSetHoldsAtMostItsBoundAndRescheduleIsAlwaysAllowed() async throws {
        #expect(try await schedule("a", delayMillis: 60_000, max: 2) == 1)
        #expect(try await schedule("b", delayMillis: 60_000, max: 2) == 1)
        // One past the bound: refused; a terminal already waiting may be scheduled again.
        #expect(try await schedule("c", delayMillis: 60_000, max: 2) == 0)
        #expect(try await schedule("a", delayMillis: 1_000, max: 2) == 1)
        #expect(try await redis.send("ZCARD", keys.wills).int == 2)
        #expect(try await redis.send("ZSCORE", keys.wills, "c").string == nil)
        await redis.close()
    }

    @Test func onlyDueWillsAreClaimedAndAClaimIsALease() async throws {
        #expect(try await schedule("due-1", delayMillis: 0, max: 1000) == 1)
        #expect(try await schedule("due-2", delayMillis: 0, max: 1000) == 1)
        #expect(try await schedule("later", delayMillis: 60_000, max: 1000) == 1)
        let claimed = try await claim(limit: 1)
        #expect(claimed.count == 2)  // one terminal, its lease
        let rest = try await claim()
        #expect(rest.count == 2 && rest[0] != claimed[0])
        // Leased: not claimed again (by any node) until the lease runs out.
        #expect(try await claim().isEmpty)
        // A lease that ran out comes back: the claiming node died before settling.
        let short = try await { () async throws -> [String] in
            _ = try await schedule("crashed", delayMillis: 0, max: 1000)
            return try await claim(leaseMillis: 200)
        }()
        #expect(short.first == "crashed")
        try await Task.sleep(for: .milliseconds(400))
        #expect(try await claim().first == "crashed")
        await redis.close()
    }

    @Test func settlingRemovesOnlyTheClaimedScheduleAndDeleteIfEqualOnlyTheSameWill() async throws {
        _ = try await schedule("s", delayMillis: 0, max: 1000)
        let claimed = try await claim()
        #expect(claimed.first == "s")
        // Scheduled again after the claim (the terminal came back and dropped again): kept.
        _ = try await schedule("s", delayMillis: 60_000, max: 1000)
        #expect(
            try await redis.send(FleetScripts.settleWill.command(keys: [keys.wills], arguments: ["s", claimed[1]])).int == 0)
        #expect(try await redis.send("ZSCORE", keys.wills, "s").string != nil)
        // Not scheduled again: removed.
        _ = try await schedule("t", delayMillis: 0, max: 1000)
        let second = try await claim()
        #expect(second.first == "t")
        #expect(try await redis.send(FleetScripts.settleWill.command(keys: [keys.wills], arguments: ["t", second[1]])).int == 1)
        #expect(try await redis.send("ZSCORE", keys.wills, "t").string == nil)

        try await redis.send("SET", keys.will("s"), "newer")
        #expect(try await redis.send(FleetScripts.deleteIfEqual.command(keys: [keys.will("s")], arguments: ["older"])).int == 0)
        #expect(try await redis.send(FleetScripts.deleteIfEqual.command(keys: [keys.will("s")], arguments: ["newer"])).int == 1)
        await redis.close()
    }

    @Test func aSessionThatRegistersAgainDropsItsKeptWill() async throws {
        #expect(try await keep("r", epoch: "e1", entry: "bye") == 1)
        let registration = FleetScripts.Registration(
            terminal: "r", epoch: "e2", connectedAt: 1, cleanStart: false, issuedAt: "", readCount: 10, persistent: true)
        let reply = try await redis.send(FleetScripts.registerCommand([registration], node: "n2", keys: keys)).array?.first ?? .null
        #expect(reply.array?.first?.string == "ok")
        #expect(try await redis.send("EXISTS", keys.will("r")).int == 0)
        await redis.close()
    }
}
