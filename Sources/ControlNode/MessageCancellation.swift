import FleetCore
import FleetRedis
import RedisClient

/// `DELETE /v1/messages/{id}`: a unicast push's copies still waiting in their terminals' lists
/// are taken out (``FleetScripts/withdraw``) and become `withdrawn`; copies in flight (sent, not
/// acknowledged) and those already gone (delivered, expired, dropped, replaced) are counted.
/// A copy a push node has just read from the list to send may still reach its terminal; a
/// terminal that is offline gets nothing.
struct MessageCancellation: Sendable {
    let dispatcher: PushDispatcher

    var redis: RedisConnection { dispatcher.redis }
    var keys: FleetKeys { dispatcher.keys }

    struct Outcome: Encodable {
        var id: String
        var targets: Int
        /// Copies taken out of lists.
        var withdrawn: Int
        /// Copies sent and not yet acknowledged: left to their terminals.
        var inFlight: Int
        /// Copies no longer waiting (delivered, expired, dropped or replaced before).
        var gone: Int
    }

    /// Targets per pipeline.
    static let chunk = 1000

    func cancel(_ id: String) async throws -> Outcome {
        let bucket = keys.statusBucket(StatusBucket(messageID: id))
        let head = try await redis.send("HMGET", bucket, MessageStatusField.record(id), MessageStatusField.scheduled(id)).throwingError()
        let fields = head.array?.map(\.string) ?? []
        let scheduled = fields.count == 2 ? fields[1].flatMap(ScheduledPushes.Record.init(decoding:)) : nil
        if let scheduled, try await ScheduledPushes(dispatcher: dispatcher, logger: dispatcher.logger).unschedule(id) {
            // Not due yet: nothing went out, all of it is withdrawn.
            var status = StatusWrites()
            status.set(MessageStatusField.cancelled(id), String(FleetClock.nowMillis()), of: id)
            _ = try await redis.pipeline(dispatcher.statusCommands(status))
            return Outcome(id: id, targets: scheduled.targets, withdrawn: scheduled.targets, inFlight: 0, gone: 0)
        }
        guard let text = fields.first ?? nil, let record = MessageStatusRecord(decoding: text) else {
            if scheduled != nil {
                throw APIError(.conflict, "conflict", "the scheduled push is going out right now: cancel again in a moment to withdraw it")
            }
            throw APIError.notFound("no message \(id.debugDescription) (unknown or past its retention)")
        }
        guard record.kind == "unicast" else {
            throw APIError(.conflict, "conflict", "a \(record.kind) push goes out at once: there is nothing stored to withdraw")
        }
        var outcome = Outcome(id: id, targets: record.targets.count, withdrawn: 0, inFlight: 0, gone: 0)
        var states = StatusWrites()
        let now = FleetClock.nowMillis()
        states.set(MessageStatusField.cancelled(id), String(now), of: id)
        for start in stride(from: 0, to: record.targets.count, by: Self.chunk) {
            let terminals = record.targets[start..<min(start + Self.chunk, record.targets.count)]
            let replies = try await redis.pipeline(
                terminals.map { FleetScripts.withdraw.command(keys: [keys.queue($0), keys.sent($0)], arguments: [id]) })
            for (terminal, reply) in zip(terminals, replies) {
                switch try Withdrawal(reply) {
                case .inFlight: outcome.inFlight += 1
                case .withdrawn:
                    outcome.withdrawn += 1
                    states.record(.withdrawn, of: id, terminal: terminal, at: now)
                case .gone: outcome.gone += 1
                }
            }
        }
        dispatcher.ledger.entered(expiresAt: record.expiresAt, count: -outcome.withdrawn)
        _ = try await redis.pipeline(dispatcher.statusCommands(states))
        return outcome
    }
}

/// What ``FleetScripts/withdraw`` did with one terminal's copy of a message.
enum Withdrawal {
    /// Taken out of the list: the entry as it was stored.
    case withdrawn(entry: String)
    /// Sent and not yet acknowledged: left to the terminal.
    case inFlight
    /// Not waiting in the list (never stored there, or no longer).
    case gone

    /// From the script's reply: the entry, an integer for in flight, nil or empty for gone.
    init(_ reply: RedisReply) throws {
        switch try reply.throwingError() {
        case .integer: self = .inFlight
        case .bulkString where reply.string?.isEmpty == false: self = .withdrawn(entry: reply.string ?? "")
        default: self = .gone
        }
    }
}
