import FleetCore
import Foundation
import Hummingbird
import RedisClient

/// The v1 HTTP API (see README "HTTP API").
struct ControlAPI: Sendable {
    let configuration: ControlNodeConfiguration
    let redis: RedisConnection
    let dispatcher: PushDispatcher
    let credentials: CredentialAuthority

    var keys: FleetKeys { configuration.keys }

    struct CredentialResponse: Encodable {
        var terminal: String
        var username: String
        var password: String
        var expiresAt: Int64
        var endpoints: [String]
    }

    func addRoutes(to router: Router<BasicRequestContext>) {
        let v1 = router.group("v1")
        v1.post("credentials") { request, context in try await issueCredential(request, context) }
        v1.delete("credentials/:terminal") { _, context in try await revokeCredential(parameter("terminal", of: context)) }
        v1.post("push") { request, context in try await push(request, context) }
        v1.post("push/batch") { request, context in try await pushBatch(request, context) }
        v1.get("messages/:id") { _, context in try await messageStatus(parameter("id", of: context)) }
        v1.delete("messages/:id") { _, context in
            try json(try await MessageCancellation(dispatcher: dispatcher).cancel(parameter("id", of: context)), status: .ok)
        }
        v1.get("terminals/:id") { _, context in try await terminalStatus(parameter("id", of: context)) }
        v1.get("terminals/:id/queue") { request, context in try await terminalQueue(parameter("id", of: context), request) }
        v1.delete("terminals/:id/queue/:message") { _, context in
            try await withdrawEntry(parameter("message", of: context), terminal: parameter("id", of: context))
        }
        v1.get("nodes") { _, _ in try await nodes() }
        v1.get("stats") { _, _ in try json(try await FleetStats(redis: redis, keys: keys).read(), status: .ok) }
    }

    // MARK: Credentials

    func issueCredential(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let body = try await decode(CredentialRequest.self, from: request, limit: 64 * 1024)
        guard TerminalID.isValid(body.terminal) else {
            throw APIError.badRequest("terminal must be 1-128 characters of A-Z a-z 0-9 _ - . : @")
        }
        let ttl = body.ttl ?? configuration.defaultCredentialTTL
        guard ttl > 0, ttl <= configuration.maximumCredentialTTL else {
            throw APIError.badRequest("ttl must be between 1 and \(configuration.maximumCredentialTTL) seconds")
        }
        // Issued after the terminal's last revocation, even within its millisecond (or with this
        // node's clock behind the revoking node's): revocation refuses credentials issued at or
        // before it. Without Redis, the clock is all there is.
        var issuedAt = FleetClock.nowMillis()
        if let reply = try? await redis.send("GET", keys.revoked(body.terminal)), let revokedAt = reply.string.flatMap(Int64.init) {
            issuedAt = max(issuedAt, revokedAt + 1)
        }
        let issued = credentials.issue(terminal: body.terminal, ttl: Int64(ttl), nowMillis: issuedAt)
        let response = CredentialResponse(
            terminal: body.terminal,
            username: body.terminal,
            password: issued.password,
            expiresAt: issued.expiresAt,
            endpoints: try await endpoints()
        )
        return try json(response, status: .created)
    }

    private func endpoints() async throws -> [String] {
        if !configuration.advertisedEndpoints.isEmpty { return configuration.advertisedEndpoints }
        return try await liveNodes().compactMap { $0.mqtt.map { "mqtt://\($0)" } }.sorted()
    }

    func revokeCredential(_ terminal: String) async throws -> Response {
        guard TerminalID.isValid(terminal) else { throw APIError.badRequest("invalid terminal id") }
        let replies = try await redis.pipeline([
            RedisCommand("SET", keys.revoked(terminal), String(FleetClock.nowMillis()), "EX", String(configuration.maximumCredentialTTL)),
            RedisCommand("GET", keys.route(terminal)),
        ])
        _ = try replies[0].throwingError()
        if let node = replies[1].string.flatMap(Route.node(in:)) {
            try await redis.send("SPUBLISH", keys.nodeChannel(node), revocationKick(terminal).encoded())
        }
        return Response(status: .noContent)
    }

    private func revocationKick(_ terminal: String) -> NodeEvent {
        var event = NodeEvent(kind: .kick, terminals: [terminal])
        event.reason = "revoked"
        return event
    }

    // MARK: Push

    func push(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let body = try await decode(PushRequest.self, from: request, limit: configuration.maximumPayloadSize * 2 + 64 * 1024)
        let command = try command(from: body)
        try [command].checkRequestBudget(configuration)
        if command.sendAt != nil {
            return try json(
                try await ScheduledPushes(dispatcher: dispatcher, logger: dispatcher.logger).schedule(command), status: .accepted)
        }
        let receipt = try await dispatcher.push(command)
        return try json(receipt, status: .accepted)
    }

    /// One result per message of a batch, in order: a receipt or an error.
    struct BatchResult: Encodable {
        struct ErrorBody: Encodable {
            var code: String
            var message: String
        }
        var id: String?
        var targets: Int?
        var error: ErrorBody?

        /// `{"results":[...]}` as `FleetJSON.encoder` writes it (sorted keys), without its cost.
        static func json(_ results: [BatchResult]) -> [UInt8] {
            var writer = JSONWriter(capacity: 16 + results.count * 48)
            writer.beginObject()
            writer.key("results")
            writer.beginArray()
            for result in results {
                writer.beginObject()
                if let error = result.error {
                    writer.key("error")
                    writer.beginObject()
                    writer.field("code", error.code)
                    writer.field("message", error.message)
                    writer.endObject()
                }
                writer.field("id", result.id)
                writer.field("targets", integer: result.targets)
                writer.endObject()
            }
            writer.endArray()
            writer.endObject()
            return writer.bytes
        }
    }

    /// `POST /v1/push/batch`: up to `maximumBatchSize` independent pushes. Each is validated
    /// and accepted on its own (the answer lists a receipt or an error per message, in order);
    /// they are stored concurrently, so their Redis commands share writes.
    func pushBatch(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let limit = min(configuration.maximumBatchSize * (configuration.maximumPayloadSize * 2 + 1024), 64 << 20)
        let body = try await decode(BatchRequest.self, from: request, limit: limit)
        guard !body.messages.isEmpty, body.messages.count <= configuration.maximumBatchSize else {
            throw APIError.badRequest("\"messages\" needs 1 to \(configuration.maximumBatchSize) pushes")
        }
        let commands: [Result<PushCommand, APIError>] = body.messages.map { message in
            Result { try command(from: message) }.mapError { APIError.from($0) }
        }
        var results = [BatchResult](repeating: BatchResult(), count: commands.count)
        let wakes = WakeBatch()
        var valid: [(index: Int, command: PushCommand)] = []
        var scheduled: [(index: Int, command: PushCommand)] = []
        for (index, command) in commands.enumerated() {
            switch command {
            case .failure(let error): results[index].error = .init(code: error.code, message: error.message)
            case .success(let command) where command.sendAt != nil: scheduled.append((index, command))
            case .success(let command): valid.append((index, command))
            }
        }
        try (valid + scheduled).map(\.command).checkRequestBudget(configuration)
        let scheduler = ScheduledPushes(dispatcher: dispatcher, logger: dispatcher.logger)
        for (index, command) in scheduled {
            do {
                let receipt = try await scheduler.schedule(command)
                results[index] = BatchResult(id: receipt.id, targets: receipt.targets)
            } catch {
                let apiError = APIError.from(error)
                results[index] = BatchResult(error: .init(code: apiError.code, message: apiError.message))
            }
        }
        let outcomes = await dispatcher.pushMany(valid.map(\.command), wakes: wakes)
        for ((index, _), outcome) in zip(valid, outcomes) {
            switch outcome {
            case .success(let receipt):
                results[index] = BatchResult(id: receipt.id, targets: receipt.targets)
            case .failure(let error):
                let apiError = APIError.from(error)
                results[index] = BatchResult(error: .init(code: apiError.code, message: apiError.message))
            }
        }
        // One wake event per push node for the whole batch.
        await dispatcher.sendWakes(wakes)
        return json(bytes: BatchResult.json(results), status: .accepted)
    }

    private func command(from body: PushRequest) throws -> PushCommand {
        try body.command(configuration)
    }

    // MARK: Status

    func messageStatus(_ id: String) async throws -> Response {
        try json(try await MessageStatusReader(redis: redis, keys: keys).status(of: id), status: .ok)
    }

    struct NodeInfo: Encodable {
        var id: String
        var mqtt: String?
        var connections: Int
        var startedAt: Int64?
    }

    /// The live push nodes, as `GET /v1/nodes` lists them.
    func liveNodes() async throws -> [NodeInfo] {
        try await FleetStats(redis: redis, keys: keys).pushNodes().map {
            NodeInfo(id: $0.id, mqtt: $0.mqtt, connections: Int($0.connections), startedAt: $0.startedAt)
        }
    }

    func nodes() async throws -> Response {
        try json(["nodes": try await liveNodes()], status: .ok)
    }

    // MARK: Helpers

    /// A path parameter, percent-decoded (`encodeURIComponent("a:b")` is `a%3Ab`).
    private func parameter(_ name: String, of context: BasicRequestContext) throws -> String {
        let raw = try context.parameters.require(name)
        guard let decoded = raw.removingPercentEncoding else { throw APIError.badRequest("\(name) is not valid percent-encoding") }
        return decoded
    }

    private func decode<T: Decodable>(_ type: T.Type, from request: Request, limit: Int) async throws -> T {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch {
            throw APIError(.contentTooLarge, "payload_too_large", "request body too large")
        }
        return try APIRequestBody.decode(T.self, from: buffer)
    }

    func json<T: Encodable>(_ value: T, status: HTTPResponse.Status) throws -> Response {
        json(bytes: try FleetJSON.encoder.encode(value), status: status)
    }

    func json(bytes: some Sequence<UInt8>, status: HTTPResponse.Status) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}

/// A JSON value for responses whose shape varies.
enum JSONValue: Encodable, Equatable {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case array([JSONValue])
    case object([String: JSONValue])
    case null

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let v): try container.encode(v)
        case .int(let v): try container.encode(v)
        case .bool(let v): try container.encode(v)
        case .array(let v): try container.encode(v)
        case .object(let v): try container.encode(v)
        case .null: try container.encodeNil()
        }
    }
}
