import FleetCore
import RedisClient

/// Reads a message's status from its bucket (``StatusBucket``) for `GET /v1/messages/{id}`.
struct MessageStatusReader: Sendable {
    let redis: RedisConnection
    let keys: FleetKeys

    /// A message's status. Every kind has the counts; a unicast push also the state of each
    /// target (up to 1000), a topic push the nodes it went to and the absent persistent
    /// sessions it was stored for, a broadcast the nodes that got it (its `delivered` counts
    /// the terminals they wrote it to).
    ///
    /// Expiry is settled here: once a unicast push's ttl has passed, a target that has not
    /// acknowledged it (still queued, or delivered at QoS 1/2 without an acknowledgement) is
    /// `expired`, whether its node dropped the entry, the list key expired in Redis, or the
    /// terminal never came back. Nothing has to run at the moment of expiry.
    func status(of id: String) async throws -> [String: JSONValue] {
        typealias Field = MessageStatusField
        let bucket = keys.statusBucket(StatusBucket(messageID: id))
        let head =
            try await redis.send(
                RedisCommand(
                    "HMGET", bucket, Field.record(id), Field.error(id), Field.nodes(id), Field.storedForSessions(id), Field.reach(id),
                    Field.cancelled(id), Field.scheduled(id))
            ).throwingError().array?.map(\.string) ?? []
        guard head.count == 7 else { throw RedisError(.unexpectedReply, "unexpected status reply") }
        let scheduled = head[6].flatMap(ScheduledPushes.Record.init(decoding:))
        guard let record = head[0].flatMap(MessageStatusRecord.init(decoding:)) else {
            guard let scheduled else { throw APIError.notFound("no message \(id.debugDescription) (unknown or past its retention)") }
            return Self.waiting(id, scheduled, cancelledAt: head[5].flatMap { Int64($0) })
        }
        func number(_ value: String??) -> Int64 { (value ?? nil).flatMap { Int64($0) } ?? 0 }
        var counts = Dictionary(uniqueKeysWithValues: MessageState.allCases.map { ($0.rawValue, Int64(0)) })
        counts["targets"] = Int64(record.targets.count)
        var body: [String: JSONValue] = [
            "id": .string(id), "kind": .string(record.kind), "qos": .int(Int64(record.qos)), "ttl": .int(Int64(record.ttl)),
            "createdAt": .int(record.createdAt),
        ]
        var states: [String: MessageState] = [:]
        switch record.kind {
        case "topic":
            body["nodes"] = .int(number(head[2]))
            body["storedForSessions"] = .int(number(head[3]))
        case "broadcast":
            body["nodes"] = .int(number(head[2]))
            counts[MessageState.delivered.rawValue] = number(head[4])
        default:
            states = try await targetStates(of: id, targets: record.targets, in: bucket)
            if record.ttl > 0, FleetClock.nowMillis() >= record.createdAt + Int64(record.ttl) * 1000 {
                states = states.mapValues { state in
                    state == .queued || (record.qos > 0 && state == .delivered) ? .expired : state
                }
            }
            counts.merge(Field.counts(ofTargets: states.values)) { $1 }
        }
        for (name, value) in counts { body[name] = .int(value) }
        // The state of each target, up to 1000 of them.
        let listed = states.keys.sorted().prefix(1000)
        body["terminals"] = .object(Dictionary(uniqueKeysWithValues: listed.map { ($0, JSONValue.string(states[$0]!.rawValue)) }))
        if let error = head[1] { body["error"] = .string(error) }
        if let cancelled = head[5].flatMap({ Int64($0) }) { body["cancelledAt"] = .int(cancelled) }
        if let scheduled { body["scheduledAt"] = .int(scheduled.due) }
        return body
    }

    /// The status of a scheduled push that has not gone out: `scheduled` true (false once
    /// cancelled), its counts all 0 (but `targets`).
    static func waiting(_ id: String, _ scheduled: ScheduledPushes.Record, cancelledAt: Int64?) -> [String: JSONValue] {
        var body: [String: JSONValue] = [
            "id": .string(id), "kind": .string(scheduled.kind), "qos": .int(Int64(scheduled.qos)), "ttl": .int(Int64(scheduled.ttl)),
            "createdAt": .int(scheduled.createdAt), "scheduledAt": .int(scheduled.due), "scheduled": .bool(cancelledAt == nil),
            "targets": .int(Int64(scheduled.targets)), "terminals": .object([:]),
        ]
        for state in MessageState.allCases { body[state.rawValue] = .int(0) }
        if let cancelledAt { body["cancelledAt"] = .int(cancelledAt) }
        return body
    }

    /// Every target's state, read 1000 targets per HMGET in one pipeline.
    func targetStates(of id: String, targets: [String], in bucket: String) async throws -> [String: MessageState] {
        let recorded = MessageStatusField.recordedStates
        var commands: [RedisCommand] = []
        for start in stride(from: 0, to: targets.count, by: 1000) {
            var fields = [bucket]
            for terminal in targets[start..<min(start + 1000, targets.count)] {
                fields += recorded.map { MessageStatusField.state($0, of: id, terminal: terminal) }
            }
            commands.append(RedisCommand("HMGET", fields))
        }
        guard !commands.isEmpty else { return [:] }
        var values: [String?] = []
        values.reserveCapacity(targets.count * recorded.count)
        for reply in try await redis.pipeline(commands) { values += (try reply.throwingError().array ?? []).map(\.string) }
        guard values.count == targets.count * recorded.count else { throw RedisError(.server, "unexpected status reply") }
        var states: [String: MessageState] = [:]
        for (index, terminal) in targets.enumerated() {
            states[terminal] = MessageStatusField.state(of: values[index * recorded.count..<(index + 1) * recorded.count])
        }
        return states
    }
}
