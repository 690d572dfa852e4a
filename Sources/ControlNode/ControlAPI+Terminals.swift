import FleetCore
import FleetRedis
import Hummingbird
import RedisClient

/// `GET /v1/terminals/{id}`, `GET /v1/terminals/{id}/queue` and `DELETE` of one entry.
extension ControlAPI {
    func terminalStatus(_ terminal: String) async throws -> Response {
        guard TerminalID.isValid(terminal) else { throw APIError.badRequest("invalid terminal id") }
        let replies = try await redis.pipeline([
            RedisCommand("GET", keys.route(terminal)),
            RedisCommand("HKEYS", keys.subscriptions(terminal)),
            RedisCommand("LLEN", keys.queue(terminal)),
        ])
        let route = try replies[0].throwingError().string.flatMap(Route.init(decoding:))
        var online = false
        if let node = route?.node {
            online = try await redis.send("EXISTS", keys.node(node)).int == 1
        }
        let subscriptions = (try replies[1].throwingError().array ?? []).compactMap(\.string).sorted()
        let body: [String: JSONValue] = [
            "terminal": .string(terminal),
            "online": .bool(online),
            "node": route.map { .string($0.node) } ?? .null,
            "connectedAt": route.map { .int($0.connectedAt) } ?? .null,
            "subscriptions": .array(subscriptions.map { .string($0) }),
            "queued": .int(try replies[2].throwingError().int ?? 0),
        ]
        return try json(body, status: .ok)
    }

    struct QueueEntry: Encodable {
        var id: String
        var topic: String
        var qos: Int
        /// Payload bytes.
        var size: Int
        /// Unix milliseconds; 0: never.
        var expiresAt: Int64
        var collapseKey: String?
        /// Seconds since the push went out (read from its id, to the second); nil when the id
        /// does not say.
        var age: Int64?
    }

    struct QueuePage: Encodable {
        var terminal: String
        /// Entries in the list now.
        var total: Int
        var offset: Int
        var entries: [QueueEntry]
    }

    /// `GET /v1/terminals/{id}/queue?offset=0&limit=50`: what waits in a terminal's list, oldest
    /// first, a page at a time (at most 500 entries).
    func terminalQueue(_ terminal: String, _ request: Request) async throws -> Response {
        guard TerminalID.isValid(terminal) else { throw APIError.badRequest("invalid terminal id") }
        let query = request.uri.queryParameters
        guard let offset = Int(query.get("offset") ?? "0"), offset >= 0, offset <= 1 << 30 else {
            throw APIError.badRequest("offset must be a number of entries from 0")
        }
        guard let limit = Int(query.get("limit") ?? "50"), (1...500).contains(limit) else {
            throw APIError.badRequest("limit must be between 1 and 500")
        }
        let replies = try await redis.pipeline([
            RedisCommand("LLEN", keys.queue(terminal)),
            RedisCommand("LRANGE", keys.queue(terminal), String(offset), String(offset + limit - 1)),
        ])
        let now = FleetClock.nowSeconds()
        let entries = (try replies[1].throwingError().array ?? []).compactMap(\.string).compactMap(StoredMessage.decode).map {
            let second = StatusBucket(messageID: $0.id).second
            return QueueEntry(
                id: $0.id, topic: $0.topic, qos: Int($0.qos), size: $0.payloadBytes.count, expiresAt: $0.expiresAt,
                collapseKey: $0.collapse,
                age: second > 0 ? max(0, now - second) : nil)
        }
        let page = QueuePage(terminal: terminal, total: Int(try replies[0].throwingError().int ?? 0), offset: offset, entries: entries)
        return try json(page, status: .ok)
    }

    /// `DELETE /v1/terminals/{id}/queue/{message}`: takes one message out of one terminal's list
    /// (its state there becomes `withdrawn`). 404 when it does not wait there, 409 when it is in
    /// flight (sent, not yet acknowledged).
    func withdrawEntry(_ message: String, terminal: String) async throws -> Response {
        guard TerminalID.isValid(terminal) else { throw APIError.badRequest("invalid terminal id") }
        guard !message.isEmpty, message.utf8.count <= 128, !message.contains("\"") else { throw APIError.badRequest("invalid message id") }
        let withdrawal = try Withdrawal(
            try await redis.send(FleetScripts.withdraw.command(keys: [keys.queue(terminal), keys.sent(terminal)], arguments: [message])))
        guard case .withdrawn(let text) = withdrawal, let entry = StoredMessage.decode(text) else {
            if case .inFlight = withdrawal { throw APIError(.conflict, "conflict", "message \(message) is in flight to \(terminal)") }
            throw APIError.notFound("message \(message.debugDescription) does not wait in \(terminal)'s list")
        }
        dispatcher.ledger.left(expiresAt: entry.expiresAt)
        if entry.hasStatus {
            var states = StatusWrites()
            states.record(.withdrawn, of: entry.id, terminal: terminal, at: FleetClock.nowMillis())
            _ = try await redis.pipeline(dispatcher.statusCommands(states))
        }
        return Response(status: .noContent)
    }
}
