import FleetCore
import FleetRedis
import Foundation
import Logging
import RedisClient

/// Pushes with `sendAt` or `delay`: kept in Redis until due (``FleetKeys/scheduledDue``,
/// ``FleetKeys/scheduledPushes``), then pushed as usual by whichever control node takes them
/// first. A control node takes a due push for a lease (it moves a lease ahead in the due set)
/// and removes it once pushed; one that dies before leaves it to come due again after the
/// lease, and the next push under the same id finishes the first attempt rather than
/// starting a second (the path a claimed command stream entry takes).
struct ScheduledPushes: Sendable {
    let dispatcher: PushDispatcher
    let logger: Logger

    var redis: RedisConnection { dispatcher.redis }
    var keys: FleetKeys { dispatcher.keys }

    /// How long a control node has to push what it took before another may.
    static let leaseMillis: Int64 = 30_000
    /// Most pushes taken at once.
    static let batch = 100
    static let interval = Duration.milliseconds(250)

    /// A scheduled push as kept in Redis.
    struct Stored: Codable {
        var to: [String]?
        var topic: String?
        var broadcast: Bool?
        var payloadBase64: String
        var qos: Int
        var ttl: Int
        var collapseKey: String?

        init(_ command: PushCommand) {
            switch command.audience {
            case .terminals(let ids): to = ids
            case .topic(let topic): self.topic = topic
            case .broadcast: broadcast = true
            }
            payloadBase64 = Data(command.payload).base64EncodedString()
            qos = Int(command.qos)
            ttl = command.ttl
            collapseKey = command.collapseKey
        }

        var command: PushCommand {
            get throws {
                try PushCommand(
                    to: to, topic: topic, broadcast: broadcast ?? false, payload: nil, payloadBase64: payloadBase64, qos: qos, ttl: ttl,
                    collapseKey: collapseKey)
            }
        }
    }

    /// What a scheduled push's status says before it goes out (``MessageStatusField/scheduled(_:)``).
    struct Record {
        var due: Int64
        var kind: String
        var qos: Int
        var ttl: Int
        var createdAt: Int64
        var targets: Int

        var encoded: String { "\(due)|\(kind)|\(qos)|\(ttl)|\(createdAt)|\(targets)" }

        init(due: Int64, kind: String, qos: Int, ttl: Int, createdAt: Int64, targets: Int) {
            (self.due, self.kind, self.qos, self.ttl, self.createdAt, self.targets) = (due, kind, qos, ttl, createdAt, targets)
        }

        init?(decoding text: String) {
            let parts = text.split(separator: "|", omittingEmptySubsequences: false)
            guard parts.count == 6, let due = Int64(parts[0]), let qos = Int(parts[2]), let ttl = Int(parts[3]),
                let createdAt = Int64(parts[4]), let targets = Int(parts[5])
            else { return nil }
            self.init(due: due, kind: String(parts[1]), qos: qos, ttl: ttl, createdAt: createdAt, targets: targets)
        }
    }

    struct Receipt: Encodable {
        var id: String
        var targets: Int
        /// Unix milliseconds.
        var scheduledAt: Int64
    }

    /// Keeps `command` (its `sendAt` set) until it is due, under `id`, or else a new id that
    /// carries the due time, so that its status bucket is the second it goes out in.
    func schedule(_ command: PushCommand, id: String? = nil) async throws -> Receipt {
        guard let due = command.sendAt else { preconditionFailure("a scheduled push has a time") }
        let id = id ?? FleetClock.newMessageID(atMillis: due)
        let kind: String
        var targets = 0
        switch command.audience {
        case .terminals(let ids):
            kind = "unicast"
            targets = Set(ids).count
        case .topic: kind = "topic"
        case .broadcast: kind = "broadcast"
        }
        let record = Record(
            due: due, kind: kind, qos: Int(command.qos), ttl: command.ttl, createdAt: FleetClock.nowMillis(), targets: targets)
        var status = StatusWrites()
        status.set(MessageStatusField.scheduled(id), record.encoded, of: id)
        let push = String(decoding: try JSONEncoder().encode(Stored(command)), as: UTF8.self)
        let replies = try await redis.pipeline(
            [
                FleetScripts.schedule.command(
                    keys: [keys.scheduledDue, keys.scheduledPushes],
                    arguments: [id, String(due), push, String(dispatcher.configuration.maximumScheduled)])
            ] + dispatcher.statusCommands(status))
        if let failure = replies.first(where: \.isError) { throw RedisError(.server, failure.description) }
        guard replies[0].int == 1 else {
            throw APIError(
                .serviceUnavailable, "unavailable",
                "\(dispatcher.configuration.maximumScheduled) pushes are scheduled already (--max-scheduled)",
                retryAfter: 60)
        }
        return Receipt(id: id, targets: targets, scheduledAt: due)
    }

    /// Takes a scheduled push out before it is due: true when it was still waiting.
    func unschedule(_ id: String) async throws -> Bool {
        let replies = try await redis.pipeline([
            RedisCommand("HDEL", keys.scheduledPushes, id), RedisCommand("ZREM", keys.scheduledDue, id),
        ])
        return try replies[0].throwingError().int == 1
    }

    /// Pushes what comes due, until cancelled.
    func run() async {
        while !Task.isCancelled {
            do {
                while try await pushDue() == Self.batch, !Task.isCancelled {}
            } catch {
                logger.warning("scheduled pushes: taking due pushes failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: Self.interval)
        }
    }

    /// Takes up to ``batch`` due pushes and pushes them; returns how many it took.
    func pushDue() async throws -> Int {
        let reply = try await redis.send(
            FleetScripts.claimScheduled.command(
                keys: [keys.scheduledDue, keys.scheduledPushes],
                arguments: [String(FleetClock.nowMillis()), String(Self.leaseMillis), String(Self.batch)])
        ).throwingError()
        let fields = (reply.array ?? []).compactMap(\.string)
        var done: [String] = []
        for index in stride(from: 0, to: fields.count - 1, by: 2) {
            let id = fields[index]
            do {
                let stored = try JSONDecoder().decode(Stored.self, from: Data(fields[index + 1].utf8))
                _ = try await dispatcher.push(try stored.command, id: id)
                done.append(id)
            } catch let error as APIError {
                // Valid when scheduled, so not expected; kept from coming back.
                logger.error("scheduled push refused", metadata: ["message": "\(id)", "error": "\(error.message)"])
                done.append(id)
            } catch {
                // Left for its lease to run out: then pushed again under the same id.
                logger.warning("scheduled push failed, retried after its lease", metadata: ["message": "\(id)", "error": "\(error)"])
            }
        }
        if !done.isEmpty {
            _ = try await redis.pipeline([
                RedisCommand("ZREM", [keys.scheduledDue] + done), RedisCommand("HDEL", [keys.scheduledPushes] + done),
            ])
        }
        return fields.count / 2
    }
}
