import FleetCore
import Foundation
import MQTTCodec

/// A validated push, from the API or the command stream.
public struct PushCommand: Sendable, Hashable {
    /// Who receives the message.
    public enum Audience: Sendable, Hashable {
        /// Terminals by id: stored for offline terminals when ttl > 0.
        case terminals([String])
        /// Every online terminal subscribed to a matching filter.
        case topic(String)
        /// Every online terminal (topic `broadcast`).
        case broadcast
    }

    public var audience: Audience
    public var payload: [UInt8]
    public var qos: UInt8
    /// Seconds the message waits for offline terminals; 0 = online only.
    public var ttl: Int
    public var idempotencyKey: String?
    /// A terminal's list holds at most one entry waiting per collapse key: a newer push with
    /// the key replaces the waiting one (whose state becomes `replaced`). Unicast pushes only.
    public var collapseKey: String?
    /// When to push (unix ms); nil: now. Kept in Redis until then (``ScheduledPushes``).
    public var sendAt: Int64?

    /// The longest collapse key, in bytes.
    public static let maximumCollapseKeyLength = 128

    public init(
        audience: Audience, payload: [UInt8], qos: UInt8 = 1, ttl: Int = 86_400, idempotencyKey: String? = nil,
        collapseKey: String? = nil
    ) {
        self.audience = audience
        self.payload = payload
        self.qos = qos
        self.ttl = ttl
        self.idempotencyKey = idempotencyKey
        self.collapseKey = collapseKey
    }

    /// Builds a push from the fields of an API body or a command stream entry: exactly one of
    /// `to`, `topic`, `broadcast`, and exactly one of `payload`, `payloadBase64`. Throws 400.
    init(
        to: [String]?,
        topic: String?,
        broadcast: Bool,
        payload: String?,
        payloadBase64: String?,
        qos: Int,
        ttl: Int,
        idempotencyKey: String? = nil,
        collapseKey: String? = nil
    ) throws {
        switch (to, topic, broadcast) {
        case (let to?, nil, false): audience = .terminals(to)
        case (nil, let topic?, false): audience = .topic(topic)
        case (nil, nil, true): audience = .broadcast
        default: throw APIError.badRequest("give exactly one of \"to\", \"topic\" or \"broadcast\": true")
        }
        switch (payload, payloadBase64) {
        case (let text?, nil): self.payload = Array(text.utf8)
        case (nil, let encoded?):
            guard let data = Data(base64Encoded: encoded) else { throw APIError.badRequest("payloadBase64 is not valid base64") }
            self.payload = Array(data)
        default: throw APIError.badRequest("give exactly one of \"payload\" or \"payloadBase64\"")
        }
        guard (0...2).contains(qos) else { throw APIError.badRequest("qos must be 0, 1 or 2") }
        self.qos = UInt8(qos)
        self.ttl = ttl
        self.idempotencyKey = idempotencyKey
        self.collapseKey = collapseKey
    }

    /// Checks limits; throws ``APIError`` (400 or 413) describing the first problem.
    func validate(_ configuration: ControlNodeConfiguration) throws {
        guard qos <= 2 else { throw APIError.badRequest("qos must be 0, 1 or 2") }
        guard ttl >= 0, ttl <= configuration.maximumTTL else {
            throw APIError.badRequest("ttl must be between 0 and \(configuration.maximumTTL) seconds")
        }
        guard payload.count <= configuration.maximumPayloadSize else {
            throw APIError(
                .contentTooLarge, "payload_too_large", "payload of \(payload.count) bytes exceeds \(configuration.maximumPayloadSize)")
        }
        switch audience {
        case .terminals(let ids):
            guard !ids.isEmpty else { throw APIError.badRequest("\"to\" needs at least one terminal") }
            guard ids.count <= configuration.maximumTargets else {
                throw APIError.badRequest("at most \(configuration.maximumTargets) terminals per push")
            }
            if let bad = ids.first(where: { !TerminalID.isValid($0) }) {
                throw APIError.badRequest("invalid terminal id \(bad.debugDescription)")
            }
            if let collapseKey {
                guard (1...Self.maximumCollapseKeyLength).contains(collapseKey.utf8.count) else {
                    throw APIError.badRequest("collapseKey must be 1 to \(Self.maximumCollapseKeyLength) bytes")
                }
                guard ttl > 0 else { throw APIError.badRequest("collapseKey needs a ttl above 0: online-only pushes are not stored") }
            }
        case .topic where collapseKey != nil, .broadcast where collapseKey != nil:
            throw APIError.badRequest("collapseKey is for pushes to terminals (\"to\")")
        case .topic(let topic):
            guard MQTTTopic.isValidTopicName(topic), topic.utf8.count <= 1024, MQTTTopic.levelCount(topic) <= MQTTTopic.defaultMaximumLevels
            else {
                throw APIError.badRequest(
                    "topic must be a non-empty topic name without wildcards or null characters, of at most 1024 bytes and \(MQTTTopic.defaultMaximumLevels) levels"
                )
            }
        case .broadcast:
            break
        }
    }
}

extension Collection where Element == PushCommand {
    /// Refuses (413) pushes that together address more terminals, or would store more bytes
    /// (payload times targets, for pushes that are stored), than one request may.
    func checkRequestBudget(_ configuration: ControlNodeConfiguration) throws {
        var targets = 0
        var bytes = 0
        for command in self {
            guard case .terminals(let ids) = command.audience else { continue }
            targets += ids.count
            if command.ttl > 0 { bytes += command.payload.count * ids.count }
        }
        guard targets <= configuration.maximumRequestTargets else {
            throw APIError(
                .contentTooLarge, "payload_too_large",
                "the request addresses \(targets) terminals; at most \(configuration.maximumRequestTargets) per request")
        }
        guard bytes <= configuration.maximumRequestBytes else {
            throw APIError(
                .contentTooLarge, "payload_too_large",
                "the request would store \(bytes) bytes (payload x targets); at most \(configuration.maximumRequestBytes) per request")
        }
    }
}

/// What a push returns: the message id and how many terminals it addresses.
public struct PushReceipt: Sendable, Hashable, Codable {
    public var id: String
    public var targets: Int
}
