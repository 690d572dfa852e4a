import FleetCore
import FleetRedis
import FleetTestSupport
import Foundation
import Logging
import RedisClient
import Testing

@testable import ControlNode

/// `--durability replica`: a push counts as accepted only once a replica has it (WAIT 1), here
/// against a real master and replica.
@Suite(.serialized)
struct DurabilityTests {
    let master: RedisServer
    let redis: RedisConnection
    let keys = FleetKeys()

    init() throws {
        // A replica's first sync starts at once (the default waits 5 s for more replicas).
        master = try RedisServer(arguments: ["--repl-diskless-sync-delay", "0"])
        redis = master.connection(scripts: FleetScripts.all)
    }

    func dispatcher(_ durability: Durability, timeout: Int = 300) -> PushDispatcher {
        var configuration = ControlNodeConfiguration(
            redis: master.configuration, host: "127.0.0.1", port: 0, secret: "s", consumerName: "c1")
        configuration.durability = durability
        configuration.replicaTimeout = timeout
        return PushDispatcher(configuration: configuration, redis: redis, logger: Logger(label: "test"))
    }

    func replica() throws -> RedisServer {
        try RedisServer(arguments: ["--replicaof", "127.0.0.1", String(master.port)])
    }

    /// Waits until a replica is attached and has this connection's writes (up to 10 s).
    func waitForReplica() async throws {
        for _ in 0..<100 {
            try await redis.send("INCR", "probe")
            if try await redis.send("WAIT", "1", "100").int == 1 { return }
        }
        Issue.record("the replica never caught up")
    }

    func queued(_ terminal: String) async throws -> [String] {
        (try await redis.send("LRANGE", keys.queue(terminal), "0", "-1").array ?? []).compactMap {
            $0.string.flatMap(StoredMessage.decode)?.id
        }
    }

    @Test func aPushIsAcceptedOnceAReplicaHasIt() async throws {
        let replica = try replica()
        try await waitForReplica()
        let receipt = try await dispatcher(.replica).push(PushCommand(audience: .terminals(["d1"]), payload: [1]))
        // The replica has the entry when the push returns.
        let onReplica = replica.connection()
        let entries = try await onReplica.send("LRANGE", keys.queue("d1"), "0", "-1").array ?? []
        #expect(entries.compactMap { $0.string.flatMap(StoredMessage.decode)?.id } == [receipt.id])
        await onReplica.close()
        await redis.close()
    }

    @Test func withoutAReplicaAPushIsNotAcceptedAndSaysWhichMessageTheMasterHas() async throws {
        let started = Date()
        await #expect(throws: NotReplicated.self) {
            try await dispatcher(.replica, timeout: 300).push(PushCommand(audience: .terminals(["d2"]), payload: [2]))
        }
        #expect(Date().timeIntervalSince(started) >= 0.25)  // it waited for the replica
        let stored = try await queued("d2")
        #expect(stored.count == 1)  // the master has it: a retry with an idempotency key finds it
        do {
            _ = try await dispatcher(.replica, timeout: 100).push(PushCommand(audience: .terminals(["d2"]), payload: [3]))
            Issue.record("accepted without a replica")
        } catch let error as NotReplicated {
            #expect(error.messageID != stored.first)
            let api = APIError.from(error)
            #expect(api.status.code == 503 && api.code == "not_replicated" && api.message.contains(error.messageID))
        }
        // The default answers at once.
        _ = try await dispatcher(.master).push(PushCommand(audience: .terminals(["d2"]), payload: [4]))
        #expect(try await queued("d2").count == 3)
        await redis.close()
    }

    /// A batch waits once; when the replica does not confirm, every push the master stored
    /// fails with its own id, and the invalid one keeps its own error.
    @Test func aBatchWaitsOnceAndFailsWhole() async throws {
        let commands = (0..<5).map { PushCommand(audience: .terminals(["b\($0)"]), payload: [UInt8($0)]) }
        try await redis.send("CONFIG", "RESETSTAT")
        let results = await dispatcher(.replica, timeout: 100).pushMany(commands, wakes: WakeBatch())
        var ids = Set<String>()
        for result in results {
            guard case .failure(let error as NotReplicated) = result else {
                Issue.record("\(result)")
                continue
            }
            ids.insert(error.messageID)
        }
        #expect(ids.count == 5)
        let stats = try await redis.send("INFO", "commandstats").string ?? ""
        #expect(stats.contains("cmdstat_wait:calls=1,"))

        let replica = try replica()
        try await waitForReplica()
        let accepted = await dispatcher(.replica).pushMany(commands, wakes: WakeBatch())
        #expect(accepted.allSatisfy { if case .success = $0 { true } else { false } })
        _ = replica
        await redis.close()
    }

    /// Through the command stream: an entry no replica confirmed stays pending (stored once on
    /// the master) and is acknowledged once a replica has it, without being stored twice.
    @Test func aStreamEntryStaysPendingUntilAReplicaHasIt() async throws {
        var configuration = ControlNodeConfiguration(
            redis: master.configuration, host: "127.0.0.1", port: 0, secret: "s", consumerName: "c1")
        configuration.durability = .replica
        configuration.replicaTimeout = 100
        let dispatcher = PushDispatcher(configuration: configuration, redis: redis, logger: Logger(label: "test"))
        let consumer = CommandStreamConsumer(
            configuration: configuration, redis: master.connection(scripts: FleetScripts.all), dispatcher: dispatcher,
            logger: Logger(label: "test"))
        for index in 0..<3 { try await redis.send("XADD", keys.commandStream, "*", "to", "s\(index)", "payload", "m\(index)") }
        let running = Task { await consumer.run() }
        defer { running.cancel() }
        func pending() async throws -> Int64 {
            try await redis.send("XPENDING", keys.commandStream, keys.commandGroup).array?.first?.int ?? -1
        }
        for _ in 0..<100 where try await queued("s2").isEmpty { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await pending() == 3)
        for index in 0..<3 { #expect(try await queued("s\(index)").count == 1) }

        let replica = try replica()
        try await waitForReplica()
        for _ in 0..<250 where try await pending() != 0 { try await Task.sleep(for: .milliseconds(20)) }
        #expect(try await pending() == 0)
        for index in 0..<3 { #expect(try await queued("s\(index)").count == 1) }  // stored once
        running.cancel()
        _ = replica
        await redis.close()
    }

    /// During a failover a write can meet a server that is a replica now: the API says "retry
    /// later" (503), not "broken" (500); a real storage error stays a 500.
    @Test func failoverErrorsAreRetryLater() {
        for message in ["(error) READONLY You can't write against a read only replica.", "LOADING Redis is loading the dataset in memory"] {
            let api = APIError.from(RedisError(.server, message))
            #expect(api.status.code == 503 && api.retryAfter == 1, "\(message)")
        }
        #expect(APIError.from(RedisError(.server, "WRONGTYPE Operation against a key holding the wrong kind of value")).status.code == 500)
    }
}
