import FleetCore
import FleetRedis
import Foundation
import Logging
import RedisClient

/// Consumes the Redis command stream (`XADD pushfleet:push '*' to t1 payload hello ...`)
/// through a consumer group, so each entry is handled by one control node.
///
/// An entry is acknowledged (XACK) only after its push was accepted; the entry id is the
/// message id. Handled entries are trimmed from the stream every ``trimInterval``. Entries left pending by a dead control node are claimed with XAUTOCLAIM after
/// `claimIdle`. An invalid entry is acknowledged and its status records the error.
struct CommandStreamConsumer: Sendable {
    let configuration: ControlNodeConfiguration
    /// A dedicated connection: XREADGROUP BLOCK holds it.
    let redis: RedisConnection
    let dispatcher: PushDispatcher
    let logger: Logger
    var batchSize = 100
    var claimIdle: Duration { .seconds(configuration.claimIdle) }
    /// How often handled entries are trimmed from the stream (it is the control nodes' work
    /// queue, and would otherwise keep every push ever added: XACK only ends the pending entry).
    var trimInterval: Duration = .seconds(2)

    var keys: FleetKeys { configuration.keys }

    func run() async {
        redis.start()
        var readPending = true
        var lastClaim = ContinuousClock.now
        var lastTrim = ContinuousClock.now
        var lastCleanup = ContinuousClock.now - FleetScripts.idleConsumerCheckInterval
        while !Task.isCancelled {
            do {
                if readPending {
                    try await createGroup()
                    // After a (re)start, first finish what this consumer had read before.
                    readPending = try await readAndHandle(from: "0") > 0
                    continue
                }
                if ContinuousClock.now - lastClaim > claimIdle / 2 {
                    lastClaim = .now
                    try await claimAbandoned()
                    if ContinuousClock.now - lastCleanup > FleetScripts.idleConsumerCheckInterval {
                        lastCleanup = .now
                        try await FleetScripts.removeIdleConsumers(
                            redis: redis, stream: keys.commandStream, group: keys.commandGroup, keeping: configuration.consumerName)
                    }
                }
                if ContinuousClock.now - lastTrim > trimInterval {
                    lastTrim = .now
                    try await trimHandled()
                }
                _ = try await readAndHandle(from: ">")
            } catch {
                logger.warning("command stream read failed", metadata: ["error": "\(error)"])
                readPending = true
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Trims the entries the group is done with: those before the oldest pending entry (read,
    /// not acknowledged), or when none is pending, before the first entry not read yet. An
    /// entry is never trimmed while it is pending or unread, so this loses nothing; it is cheap
    /// (`XTRIM MINID` drops from the head), where an `XDEL` per entry cost Redis 2 us each.
    func trimHandled() async throws {
        let replies = try await redis.pipeline([
            RedisCommand("XPENDING", keys.commandStream, keys.commandGroup),
            RedisCommand("XINFO", "GROUPS", keys.commandStream),
        ])
        // XPENDING summary: [count, smallest id, greatest id, consumers].
        let pending = try replies[0].throwingError().array ?? []
        let keep: String
        if let count = pending.first?.int, count > 0, let smallest = pending.dropFirst().first?.string {
            keep = smallest
        } else {
            // XINFO GROUPS: per group a flat list of name, value, ...
            let groups = try replies[1].throwingError().array ?? []
            let ours = groups.compactMap(\.pairs).first { $0["name"] == keys.commandGroup }
            guard let lastRead = ours?["last-delivered-id"], let next = Self.entryID(after: lastRead) else { return }
            keep = next
        }
        _ = try await redis.send("XTRIM", keys.commandStream, "MINID", keep)
    }

    /// The smallest stream entry id after `id` (`<ms>-<seq>`).
    static func entryID(after id: String) -> String? {
        let parts = id.split(separator: "-")
        guard parts.count == 2, let millis = UInt64(parts[0]), let sequence = UInt64(parts[1]) else { return nil }
        return sequence == .max ? "\(millis + 1)-0" : "\(millis)-\(sequence + 1)"
    }

    private func createGroup() async throws {
        do {
            try await redis.send("XGROUP", "CREATE", keys.commandStream, keys.commandGroup, "0", "MKSTREAM")
        } catch let error as RedisError where error.message.hasPrefix("BUSYGROUP") {
            // The group exists already.
        }
    }

    /// Reads one batch and handles it; returns the number of entries seen.
    private func readAndHandle(from id: String) async throws -> Int {
        let reply = try await redis.send(
            RedisCommand(
                "XREADGROUP", "GROUP", keys.commandGroup, configuration.consumerName, "COUNT", String(batchSize),
                "BLOCK", "1000", "STREAMS", keys.commandStream, id
            )
        )
        // [[stream, [[id, [field, value, ...]], ...]]]
        guard let streams = reply.array, let first = streams.first?.array, first.count == 2, let entries = first[1].array else { return 0 }
        try await handle(entries, fresh: id == ">")
        return entries.count
    }

    private func claimAbandoned() async throws {
        let reply = try await redis.send(
            RedisCommand(
                "XAUTOCLAIM", keys.commandStream, keys.commandGroup, configuration.consumerName,
                String(Int(claimIdle.components.seconds) * 1000), "0-0", "COUNT", String(batchSize)
            )
        )
        guard let parts = reply.array, parts.count >= 2, let entries = parts[1].array, !entries.isEmpty else { return }
        logger.info("claimed abandoned command stream entries", metadata: ["count": "\(entries.count)"])
        try await handle(entries, fresh: false)
    }

    /// Handles one read of entries. Entries read for the first time (`fresh`) that store
    /// pushes to terminals go through ``PushDispatcher/pushMany(_:ids:wakes:)``: one pipeline
    /// in stream order, with no lookup of an earlier attempt (there is none). The rest (topic
    /// pushes, broadcasts, online-only pushes, invalid entries, and every entry read again or
    /// claimed, which may have been half done) run one at a time: pushes to disjoint terminals
    /// concurrently (their Redis commands share flushes), pushes to the same terminal in
    /// stream order. Each node gets one wake event for the read, and the entries accepted are
    /// acknowledged with one XACK; one that failed stays pending and is read again.
    private func handle(_ entries: [RedisReply], fresh: Bool) async throws {
        var parsed: [Entry] = []
        for entry in entries {
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { continue }
            // A deleted entry still pending shows as [id, nil].
            let fields = Dictionary((parts[1].pairs ?? [:]).map { ($0.key.lowercased(), $0.value) }) { first, _ in first }
            parsed.append(Entry(id: id, fields: fields, configuration: configuration))
        }
        let wakes = WakeBatch()
        var acknowledged: [String] = []
        var failure: (any Error)?
        var single = parsed
        if fresh {
            var batch: [(id: String, command: PushCommand)] = []
            var rest: [Entry] = []
            for entry in parsed {
                if case .success(let command) = entry.command, case .terminals = command.audience, command.ttl > 0, command.sendAt == nil {
                    batch.append((entry.id, command))
                } else {
                    rest.append(entry)
                }
            }
            // An entry run on its own must not overtake a batched one to the same terminal.
            let batched = Set(batch.flatMap { Self.orderingKeys(of: $0.command) })
            if !batch.isEmpty, rest.allSatisfy({ $0.orderingKeys.allSatisfy { !batched.contains($0) } }) {
                let results = await dispatcher.pushMany(batch.map(\.command), ids: batch.map(\.id), wakes: wakes)
                for (entry, result) in zip(batch, results) {
                    switch result {
                    case .success: acknowledged.append(entry.id)
                    case .failure(let error): failure = error
                    }
                }
                single = rest
            }
        }
        do {
            try await handleOneByOne(single, fresh: fresh, wakes: wakes)
            acknowledged += single.map(\.id)
        } catch {
            failure = error
        }
        await dispatcher.sendWakes(wakes)
        if !acknowledged.isEmpty {
            try await redis.send(RedisCommand("XACK", [keys.commandStream, keys.commandGroup] + acknowledged))
        }
        if let failure { throw failure }
    }

    /// Entries one push at a time: in stream order per terminal or topic, concurrently across.
    private func handleOneByOne(_ entries: [Entry], fresh: Bool, wakes: WakeBatch) async throws {
        var chains: [[Entry]] = []
        var chainOf: [String: Int] = [:]  // terminal, topic or "broadcast" -> chain
        for entry in entries {
            let keys = entry.orderingKeys
            let chain = keys.lazy.compactMap { chainOf[$0] }.first ?? chains.count
            if chain == chains.count { chains.append([]) }
            chains[chain].append(entry)
            for key in keys where chainOf[key] == nil { chainOf[key] = chain }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for chain in chains {
                group.addTask {
                    for entry in chain { try await handle(entry, fresh: fresh, wakes: wakes) }
                }
            }
            try await group.waitForAll()
        }
    }

    /// The ordering keys of a valid push (as ``orderingKeys(_:)`` finds them in its fields).
    static func orderingKeys(of command: PushCommand) -> [String] {
        switch command.audience {
        case .terminals(let terminals): terminals.map { "t:" + $0 }
        case .topic(let topic): ["topic:" + topic]
        case .broadcast: ["broadcast"]
        }
    }

    /// What an entry must stay in order with: its terminals, or its topic.
    static func orderingKeys(_ fields: [String: String]) -> [String] {
        if let to = fields["to"] { return to.split(separator: ",").map { "t:" + $0.trimmingCharacters(in: .whitespaces) } }
        if let topic = fields["topic"] { return ["topic:" + topic] }
        return ["broadcast"]
    }

    /// A stream entry as read, its push parsed and checked once (an invalid entry carries the
    /// ``APIError`` its status records): the batch and the one-by-one path share the result.
    struct Entry: Sendable {
        var id: String
        var fields: [String: String]
        var command: Result<PushCommand, any Error>

        init(id: String, fields: [String: String], configuration: ControlNodeConfiguration) {
            self.id = id
            self.fields = fields
            command = Result {
                var command = try CommandStreamConsumer.command(from: fields)
                command.sendAt = try CommandStreamConsumer.dueTime(from: fields, configuration: configuration)
                try command.validate(configuration)
                return command
            }
        }

        /// What it must stay in order with (from its fields, so an invalid entry has them too).
        var orderingKeys: [String] { CommandStreamConsumer.orderingKeys(fields) }
    }

    private func handle(_ entry: Entry, fresh: Bool, wakes: WakeBatch) async throws {
        let id = entry.id
        do {
            let command = try entry.command.get()
            if command.sendAt != nil {
                // Kept until due under the entry id (again, if read again: the same push).
                _ = try await ScheduledPushes(dispatcher: dispatcher, logger: logger).schedule(command, id: id)
                return
            }
            // A push already completed under this id (handled before, not acknowledged) returns at once.
            _ = try await dispatcher.push(command, id: id, fresh: fresh, wakes: wakes)
        } catch let error as APIError {
            logger.info("invalid command stream entry", metadata: ["entry": "\(id)", "error": "\(error.message)"])
            var status = StatusWrites()
            let record = MessageStatusRecord(kind: "unicast", qos: 0, ttl: 0, createdAt: FleetClock.nowMillis(), expiresAt: 0)
            status.set(MessageStatusField.record(id), record.encoded, of: id)
            status.set(MessageStatusField.error(id), error.message, of: id)
            _ = try await redis.pipeline(dispatcher.statusCommands(status))
        }
    }

    /// When an entry with `sendat` (unix seconds) or `delay` (seconds) is due (unix ms); nil
    /// for now. An entry's push is scheduled under the entry id, whose status bucket is the
    /// second it was added: it may be scheduled at most the status retention ahead (and the
    /// schedule horizon), so that its status is still there when it goes out (the bucket's
    /// expiry then moves to a retention after that, ``StatusBucket/expiresAt(retention:nowSeconds:)``).
    static func dueTime(from fields: [String: String], configuration: ControlNodeConfiguration) throws -> Int64? {
        let sendAt = try fields["sendat"].map { text in
            guard let value = Int64(text) else { throw APIError.badRequest("sendAt must be unix seconds") }
            return value
        }
        let delay = try fields["delay"].map { text in
            guard let value = Int(text) else { throw APIError.badRequest("delay must be a number of seconds") }
            return value
        }
        let retentionBound = configuration.statusRetention < configuration.maximumScheduleAhead
        return try PushCommand.dueTime(
            sendAt: sendAt, delay: delay, horizon: min(configuration.maximumScheduleAhead, configuration.statusRetention),
            why: retentionBound ? " (--status-retention: a command stream entry's status is kept from when it was added)" : "")
    }

    /// Builds a push from stream fields: `to` (comma separated), `topic` or `broadcast 1`;
    /// `payload` or `payloadBase64`; optional `qos`, `ttl`, `collapse` (and `sendat` or
    /// `delay`, read by ``dueTime(from:configuration:)``).
    static func command(from fields: [String: String]) throws -> PushCommand {
        guard let qos = Int(fields["qos"] ?? "1") else { throw APIError.badRequest("qos must be 0, 1 or 2") }
        guard let ttl = Int(fields["ttl"] ?? "86400") else { throw APIError.badRequest("ttl must be a number of seconds") }
        return try PushCommand(
            to: fields["to"].map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
            topic: fields["topic"],
            broadcast: ["1", "true", "yes"].contains(fields["broadcast"]?.lowercased() ?? ""),
            payload: fields["payload"],
            payloadBase64: fields["payloadbase64"],
            qos: qos,
            ttl: ttl,
            collapseKey: fields["collapse"]
        )
    }
}
