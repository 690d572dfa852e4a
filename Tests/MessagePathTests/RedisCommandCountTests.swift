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
        // The acknowledgement always comes within the `sent` record's wait (as it usually does
        // within the node's 0.5 s).
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
            case .register(let request):
                session.registered(await result { try await store.register(request, on: node.context.redis.eventLoop).get() })
            case .claimHandle: session.handleClaimed(previousHere: false, missedWake: false)
            case .readStored(let read): session.storedRead(read, await result { try await store.read(read).get() })
            case .store(let writes): try await store.write(writes).get()
            case .storeRemoving(let writes, let ids):
                let loop = node.context.redis.eventLoop
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    store.remove(writes, confirmed: { done.resume() }, on: loop)
                }
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

    /// Pushes to `count` connected terminals in one batch (as `POST /v1/push/batch` and a read
    /// of the command stream store them), each delivered from its wake event's entry and
    /// acknowledged within the status recorder's tick.
    @Test func unicastPushesAndTheirAcknowledgements() async throws {
        let count = 20
        let terminals = (0..<count).map { "t\($0)" }
        var sessions: [MQTTSession] = []
        for terminal in terminals {
            var session = MQTTSession(environment: node.context.sessionEnvironment)
            _ = try await run(&session) { $0.connectionOpened() }
            let connack = try await run(&session) {
                $0.packetReceived(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: terminal)))
            }
            #expect(connack.first.map { if case .connAck(let ack) = $0 { ack.reasonCode == .success } else { false } } == true)
            sessions.append(session)
        }

        let control = server.connection(scripts: FleetScripts.all)
        let dispatcher = PushDispatcher(
            configuration: ControlNodeConfiguration(
                redis: server.configuration, host: "127.0.0.1", port: 0, secret: Self.secret, consumerName: "c1"),
            redis: control, logger: Logger(label: "test"))
        // Connected, its scripts loaded: that happens once per connection, not per push.
        _ = try await control.send("PING")
        try await resetStats()
        let wakes = WakeBatch()
        let receipts = await dispatcher.pushMany(
            terminals.map { PushCommand(audience: .terminals([$0]), payload: Array("hello".utf8)) }, wakes: wakes)
        await dispatcher.sendWakes(wakes)
        let ids = try receipts.map { try $0.get().id }
        let buckets = Set(ids.map(StatusBucket.init(messageID:))).count
        let push = try await calls()
        // Per push: RPUSH, PEXPIRE NX and PEXPIRE GT (the list lives as long as its
        // longest-lived entry). Per batch: one MGET of the routes; per status bucket it touches:
        // HSET of the records and EXPIREAT (no `complete` mark: these new ids are never
        // attempted again); per node holding targets: one SPUBLISH.
        #expect(push == ["rpush": count, "pexpire": 2 * count, "mget": 1, "hset": buckets, "expireat": buckets, "spublish": 1])
        #expect(buckets <= 2 * StatusBucket.shards)

        // Each node delivers from the wake event's entry, each terminal acknowledges.
        var stored: [[String]] = []
        for terminal in terminals {
            stored.append(try await stats.send("LRANGE", keys.queue(terminal), "0", "-1").array?.compactMap(\.string) ?? [])
        }
        #expect(stored.allSatisfy { $0.count == 1 })
        try await resetStats()
        for (index, entries) in stored.enumerated() {
            let published = try await run(&sessions[index]) { $0.wake(entries: entries) }
            guard case .publish(let publish) = published.first, let packetID = publish.packetIdentifier else {
                Issue.record("not delivered: \(published)")
                return
            }
            _ = try await run(&sessions[index]) { $0.packetReceived(.pubAck(MQTTAckPacket(packetIdentifier: packetID))) }
        }
        status.flush()
        _ = try await node.context.redis.send("PING")
        let delivery = try await calls()
        // Per acknowledgement: LREM. Per status bucket and tick: one HSET of the states
        // (`delivered`, still held for its tick, gave way to `acknowledged`) and the bucket's
        // EXPIRE NX (once in a while per node). The `sent` records never reached Redis:
        // acknowledged within their tick (each would cost an HSET, and an HDEL on the
        // acknowledgement).
        #expect(delivery == ["lrem": count, "hset": buckets, "expire": buckets])

        // Per message: 4 commands, and the batch's share of the rest.
        let total = (push.values.reduce(0, +) + delivery.values.reduce(0, +))
        #expect(total == 4 * count + 2 + 4 * buckets)

        // And the statuses say so; the lists are empty.
        for (id, terminal) in zip(ids, terminals) {
            let fields = MessageStatusField.recordedStates.map { MessageStatusField.state($0, of: id, terminal: terminal) }
            let values = try await stats.send(RedisCommand("HMGET", [keys.statusBucket(StatusBucket(messageID: id))] + fields)).array ?? []
            #expect(MessageStatusField.state(of: values.map(\.string)) == .acknowledged)
            #expect(try await stats.send("LLEN", keys.queue(terminal)).int == 0)
        }
    }

    func result<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
        do { return .success(try await body()) } catch { return .failure(error) }
    }
}
