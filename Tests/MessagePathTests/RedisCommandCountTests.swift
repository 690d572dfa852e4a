import ControlNode
import FleetCore
import FleetRedis
import FleetTestSupport
import Logging
import MQTTCodec
import RedisClient
import Testing

@testable import PushNode

/// What one unicast push and its acknowledgement cost in Redis, counted by `INFO
/// commandstats` on a redis-server of its own (Lua's inner calls included): the control
/// node's batch path stores the push, the real ``MQTTSession`` of a connected terminal
/// delivers it from its wake event and takes the PUBACK, and its actions are performed with
/// the node's ``RedisSessionStore`` and ``StatusRecorder``. A change that adds a command per
/// message fails here; one that removes some updates the figures (and BENCHMARKS.md).
@Suite(.serialized)
struct RedisCommandCountTests {
    let server: RedisServer
    let node: PushNode
    let stats: RedisConnection
    /// The node's status recorder, with a tick long enough that an acknowledgement always
    /// comes within it (as it usually does within the node's 20 ms).
    let status: StatusRecorder
    let keys = FleetKeys()
    static let secret = "command-count-tests-secret-32-by"

    init() throws {
        server = try RedisServer()
        var configuration = PushNodeConfiguration(
            redis: server.configuration, mqttHost: "127.0.0.1", mqttPort: 0, nodeID: "n1", secret: Self.secret)
        configuration.allowAnonymous = true
        // The acknowledgement always comes within the `sent` record's tick (as it usually does
        // within the node's 20 ms).
        configuration.sentRecordInterval = .seconds(60)
        node = PushNode(configuration: configuration, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        stats = server.connection()
        status = StatusRecorder(redis: node.context.redis, keys: keys, logger: Logger(label: "test"), interval: .seconds(60))
    }

    /// Calls per command since the last reset, without the counting's own commands.
    func calls() async throws -> [String: Int] {
        let text = try await stats.send("INFO", "commandstats").string ?? ""
        var calls: [String: Int] = [:]
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let parts = line.dropFirst("cmdstat_".count).split(separator: ":", maxSplits: 1)
            let name = String(parts.first ?? "")
            guard parts.count == 2, !["info", "config", "ping"].contains(name), !name.hasPrefix("config|") else { continue }
            let fields = parts[1].split(separator: ",")
            if let value = fields.first(where: { $0.hasPrefix("calls=") }).flatMap({ Int($0.dropFirst("calls=".count)) }) {
                calls[String(parts[0])] = value
            }
        }
        return calls
    }

    func resetStats() async throws {
        _ = try await stats.send("CONFIG", "RESETSTAT")
    }

    /// Performs the session's actions against Redis as its connection would, feeding the
    /// replies back, until it asks for nothing more; returns the packets it wrote. `flush`:
    /// the states held for the recorder's tick go too.
    func run(_ session: inout MQTTSession, flush: Bool = false, _ event: (inout MQTTSession) -> Void) async throws -> [MQTTPacket] {
        event(&session)
        let store = RedisSessionStore(node: node.context, terminal: session.terminal)
        var written: [MQTTPacket] = []
        var pending = session.takeActions()
        while !pending.isEmpty {
            let action = pending.removeFirst()
            switch action {
            case .write(let packet): written.append(packet)
            case .admit: session.admitted()
            case .register(let request): session.registered(await result { try await store.register(request).get() })
            case .claimHandle: session.handleClaimed(previousHere: false, missedWake: false)
            case .readStored(let read): session.storedRead(read, await result { try await store.read(read).get() })
            case .store(let writes): try await store.write(writes).get()
            case .storeRemoving(let writes, let ids):
                try await store.write(writes).get()
                session.removalConfirmed(ids)
            case .recordState(let id, let state): status.record(id, terminal: session.terminal, state)
            default: break
            }
            pending += session.takeActions()
        }
        if flush { status.flush() }
        // A PING on the node's connection returns once Redis has run everything sent before it.
        _ = try await node.context.redis.send("PING")
        return written
    }

    @Test func oneUnicastPushAndItsAcknowledgement() async throws {
        // A terminal connected (MQTT 5, clean) to node n1.
        var session = MQTTSession(environment: node.context.sessionEnvironment)
        _ = try await run(&session) { $0.connectionOpened() }
        let connack = try await run(&session) {
            $0.packetReceived(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        }
        #expect(connack.first.map { if case .connAck(let ack) = $0 { ack.reasonCode == .success } else { false } } == true)

        // The push, through the batch path (as POST /v1/push/batch and the command stream do).
        let control = server.connection(scripts: FleetScripts.all)
        let dispatcher = PushDispatcher(
            configuration: ControlNodeConfiguration(
                redis: server.configuration, host: "127.0.0.1", port: 0, secret: Self.secret, consumerName: "c1"),
            redis: control, logger: Logger(label: "test"))
        // Connected, its scripts loaded: that happens once per connection, not per push.
        _ = try await control.send("PING")
        try await resetStats()
        let wakes = WakeBatch()
        let receipts = await dispatcher.pushMany([PushCommand(audience: .terminals(["t1"]), payload: Array("hello".utf8))], wakes: wakes)
        await dispatcher.sendWakes(wakes)
        let id = try receipts[0].get().id
        let push = try await calls()
        // Status: HSET and EXPIRE of the status hash (its target's state in it); store: RPUSH,
        // PEXPIRE NX, PEXPIRE GT; route: HGET; the node's wake: SPUBLISH.
        #expect(push == ["hset": 1, "expire": 1, "rpush": 1, "pexpire": 2, "hget": 1, "spublish": 1])
        #expect(push.values.reduce(0, +) == 7)

        // The node delivers it from the wake event's entry, the terminal acknowledges it.
        let entries = try await stats.send("LRANGE", keys.queue("t1"), "0", "-1").array?.compactMap(\.string) ?? []
        #expect(entries.count == 1)
        try await resetStats()
        let published = try await run(&session) { $0.wake(entries: entries) }
        guard case .publish(let publish) = published.first, let packetID = publish.packetIdentifier else {
            Issue.record("not delivered: \(published)")
            return
        }
        _ = try await run(&session, flush: true) { $0.packetReceived(.pubAck(MQTTAckPacket(packetIdentifier: packetID))) }
        let delivery = try await calls()
        // Delivery and acknowledgement: LREM, and the `acknowledged` transition (one EVALSHA
        // running HGET and HSET of the target's state; `delivered`, still held for its tick, is
        // folded into it). The `sent` record never reached Redis: acknowledged within its tick
        // (it would cost an HSET, and an HDEL on the acknowledgement).
        #expect(delivery == ["lrem": 1, "evalsha": 1, "hget": 1, "hset": 1])
        #expect(delivery.values.reduce(0, +) == 4)

        // And the status says so.
        let state = try await stats.send("HGET", keys.messageStatus(id), MessageStatusField.target("t1")).string
        #expect(state == MessageState.acknowledged.rawValue)
        #expect(try await stats.send("LLEN", keys.queue("t1")).int == 0)
    }

    func result<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
        do { return .success(try await body()) } catch { return .failure(error) }
    }
}
