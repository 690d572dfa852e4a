import FleetCore
import Foundation
import NIOCore

/// `POST /v1/credentials`.
struct CredentialRequest: Decodable {
    var terminal: String
    var ttl: Int?
}

/// `POST /v1/push`, and each message of a batch.
struct PushRequest: Decodable, Equatable {
    var to: [String]?
    var topic: String?
    var broadcast: Bool?
    var payload: String?
    var payloadBase64: String?
    var qos: Int?
    var ttl: Int?
    var idempotencyKey: String?
    var collapseKey: String?
    /// Unix seconds to push at, or seconds from now: kept until then.
    var sendAt: Int64?
    var delay: Int?

    /// The push it asks for, checked against the configuration (throws ``APIError``).
    func command(_ configuration: ControlNodeConfiguration) throws -> PushCommand {
        var command = try PushCommand(
            to: to,
            topic: topic,
            broadcast: broadcast ?? false,
            payload: payload,
            payloadBase64: payloadBase64,
            qos: qos ?? 1,
            ttl: ttl ?? 86_400,
            idempotencyKey: idempotencyKey,
            collapseKey: collapseKey
        )
        command.sendAt = try scheduledTime(configuration)
        try command.validate(configuration)
        return command
    }
}

extension PushRequest {
    /// When a push with `sendAt` or `delay` is due (unix ms), within the horizon; nil for now
    /// (no time given, or one already past).
    func scheduledTime(_ configuration: ControlNodeConfiguration) throws -> Int64? {
        try PushCommand.dueTime(sendAt: sendAt, delay: delay, horizon: configuration.maximumScheduleAhead)
    }
}

extension PushCommand {
    /// When a push given `sendAt` (unix seconds) or `delay` (seconds) is due, in unix ms, at
    /// most `horizon` seconds ahead; nil for now (no time given, or one already past). Throws
    /// 400 for both, or a time out of bounds (`why` says where the horizon comes from).
    static func dueTime(sendAt: Int64?, delay: Int?, horizon: Int, why: String = "", now: Int64 = FleetClock.nowMillis()) throws
        -> Int64?
    {
        let due: Int64
        switch (sendAt, delay) {
        case (nil, nil): return nil
        case (let sendAt?, nil):
            guard sendAt >= 0, sendAt < Int64(Int32.max) * 100 else { throw APIError.badRequest("sendAt must be unix seconds") }
            due = sendAt * 1000
        case (nil, let delay?):
            guard delay >= 0, delay <= horizon else { throw APIError.badRequest("delay must be between 0 and \(horizon) seconds\(why)") }
            due = now + Int64(delay) * 1000
        default: throw APIError.badRequest("give sendAt or delay, not both")
        }
        guard due <= now + Int64(horizon) * 1000 else {
            throw APIError.badRequest("a push may be scheduled at most \(horizon) seconds ahead\(why)")
        }
        return due > now ? due : nil
    }
}

/// `POST /v1/push/batch`.
struct BatchRequest: Decodable, Equatable {
    var messages: [PushRequest]
}

/// A request body with a reader cheaper than `JSONDecoder` for text that is plainly valid
/// (strict JSON, known keys once each, integers written as integers). It gives up, returning
/// nil, on anything else, and `JSONDecoder` then reads the body and names the problem: what is
/// accepted, and how, stays what `JSONDecoder` decides. The batch endpoint spent a sixth of
/// the control node's CPU in `JSONDecoder`.
protocol ScannableRequest: Decodable {
    init?(scanning scanner: inout JSONScanner)
}

extension ScannableRequest {
    static func scanned(from buffer: ByteBuffer) -> Self? {
        buffer.withUnsafeReadableBytes { raw in
            raw.withMemoryRebound(to: UInt8.self) { bytes in
                var scanner = JSONScanner(bytes)
                scanner.validatesUTF8 = true
                guard let value = Self(scanning: &scanner), scanner.atEnd() else { return nil }
                return value
            }
        }
    }
}

extension PushRequest: ScannableRequest {
    init?(scanning scanner: inout JSONScanner) {
        var request = PushRequest()
        var seen: UInt16 = 0
        let read = scanner.object { scanner, key in
            let bit: UInt16
            switch key {
            case "to": bit = 1 << 0
            case "topic": bit = 1 << 1
            case "broadcast": bit = 1 << 2
            case "payload": bit = 1 << 3
            case "payloadBase64": bit = 1 << 4
            case "qos": bit = 1 << 5
            case "ttl": bit = 1 << 6
            case "idempotencyKey": bit = 1 << 7
            case "collapseKey": bit = 1 << 8
            case "sendAt": bit = 1 << 9
            case "delay": bit = 1 << 10
            default: return scanner.skipValue()
            }
            guard seen & bit == 0 else { return false }
            seen |= bit
            if scanner.null() { return true }
            switch key {
            case "to": request.to = scanner.strings()
            case "topic": request.topic = scanner.string()
            case "broadcast": request.broadcast = scanner.bool()
            case "payload": request.payload = scanner.string()
            case "payloadBase64": request.payloadBase64 = scanner.string()
            case "qos": request.qos = scanner.plainInteger().flatMap { Int(exactly: $0) }
            case "ttl": request.ttl = scanner.plainInteger().flatMap { Int(exactly: $0) }
            case "collapseKey": request.collapseKey = scanner.string()
            case "sendAt": request.sendAt = scanner.plainInteger()
            case "delay": request.delay = scanner.plainInteger().flatMap { Int(exactly: $0) }
            default: request.idempotencyKey = scanner.string()
            }
            return !scanner.failed
        }
        guard read else { return nil }
        self = request
    }
}

extension BatchRequest: ScannableRequest {
    init?(scanning scanner: inout JSONScanner) {
        var messages: [PushRequest]?
        let read = scanner.object { scanner, key in
            guard key == "messages" else { return scanner.skipValue() }
            guard messages == nil else { return false }
            messages = scanner.array { PushRequest(scanning: &$0) }
            return messages != nil
        }
        guard read, let messages else { return nil }
        self.messages = messages
    }
}

/// A request body read as JSON, with the errors the API answers (400 naming the field).
enum APIRequestBody {
    static func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        if let scannable = T.self as? any ScannableRequest.Type, let value = scannable.scanned(from: buffer) as? T {
            return value
        }
        return try decodeWithFoundation(type, from: buffer)
    }

    /// `JSONDecoder`'s reading, which decides what is valid (and the fuzz target holds the
    /// scanning readers to).
    static func decodeWithFoundation<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
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
