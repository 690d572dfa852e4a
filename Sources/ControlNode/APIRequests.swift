import FleetCore
import Foundation
import NIOCore

/// `POST /v1/credentials`.
struct CredentialRequest: Decodable {
    var terminal: String
    var ttl: Int?
}

/// `POST /v1/push`, and each message of a batch.
struct PushRequest: Decodable {
    var to: [String]?
    var topic: String?
    var broadcast: Bool?
    var payload: String?
    var payloadBase64: String?
    var qos: Int?
    var ttl: Int?
    var idempotencyKey: String?

    /// The push it asks for, checked against the configuration (throws ``APIError``).
    func command(_ configuration: ControlNodeConfiguration) throws -> PushCommand {
        let command = try PushCommand(
            to: to,
            topic: topic,
            broadcast: broadcast ?? false,
            payload: payload,
            payloadBase64: payloadBase64,
            qos: qos ?? 1,
            ttl: ttl ?? 86_400,
            idempotencyKey: idempotencyKey
        )
        try command.validate(configuration)
        return command
    }
}

/// `POST /v1/push/batch`.
struct BatchRequest: Decodable {
    var messages: [PushRequest]
}

/// A request body read as JSON, with the errors the API answers (400 naming the field).
enum APIRequestBody {
    static func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch DecodingError.keyNotFound(let key, _) {
            throw APIError.badRequest("missing field \"\(key.stringValue)\"")
        } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw APIError.badRequest("field \"\(path)\" has the wrong type")
        } catch {
            throw APIError(.badRequest, "invalid_json", "request body is not valid JSON")
        }
    }
}
