import FleetCore
import Foundation
import MQTTCodec
import NIOCore

/// One of a session's subscriptions and its options.
struct Subscription: Hashable, Sendable {
    var qos: MQTTQoS
    var noLocal = false
    var retainAsPublished = false
    /// MQTT 5 subscription identifier.
    var identifier: UInt32?

    init(qos: MQTTQoS, noLocal: Bool = false, retainAsPublished: Bool = false, identifier: UInt32? = nil) {
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.identifier = identifier
    }

    /// The form kept in the terminal's subscriptions hash: the QoS digit, then `n` (no local),
    /// `r` (retain as published) and `#<id>`, e.g. `1`, `2nr#7`.
    var encoded: String {
        var text = String(qos.rawValue)
        if noLocal { text += "n" }
        if retainAsPublished { text += "r" }
        if let identifier { text += "#\(identifier)" }
        return text
    }

    init?(encoded text: String) {
        guard let first = text.first, let digit = first.wholeNumberValue, let qos = MQTTQoS(rawValue: UInt8(clamping: digit)) else {
            return nil
        }
        self.qos = qos
        let rest = text.dropFirst()
        let flags = rest.prefix { $0 != "#" }
        noLocal = flags.contains("n")
        retainAsPublished = flags.contains("r")
        if let hash = rest.firstIndex(of: "#") { identifier = UInt32(rest[rest.index(after: hash)...]) }
    }
}

/// How one message goes to one session.
struct Delivery {
    var qos: MQTTQoS
    /// The RETAIN flag on the PUBLISH sent.
    var retain: Bool
    var subscriptionIdentifiers: [UInt32]
}

extension StoredMessage {
    /// A message a terminal published (or its will), as it travels through the fleet.
    init(published topic: String, payload: ByteBuffer, qos: MQTTQoS, retain: Bool, properties: MQTTProperties, origin: String) {
        let expiry = properties.integer(.messageExpiryInterval)
        self.init(
            id: FleetClock.newMessageID(),
            qos: qos.rawValue,
            expiresAt: expiry.map { FleetClock.nowMillis() + Int64($0) * 1000 } ?? 0,
            topic: topic,
            payload: Array(payload.readableBytesView)
        )
        self.origin = origin
        self.retain = retain ? true : nil
        format = properties.integer(.payloadFormatIndicator).map { UInt8(clamping: $0) }
        if case .string(let type) = properties[.contentType] { contentType = type }
        if case .string(let topic) = properties[.responseTopic] { responseTopic = topic }
        if case .binary(let data) = properties[.correlationData] { correlation = Data(data).base64EncodedString() }
        let userProperties = properties.userProperties
        if !userProperties.isEmpty { user = userProperties.map { [$0.0, $0.1] } }
    }

    /// The MQTT 5 PUBLISH properties a receiver gets: forwarded ones for terminal publishes,
    /// the `message-id` user property for pushes, the remaining expiry, subscription ids.
    func outboundProperties(subscriptionIdentifiers: [UInt32], nowMillis: Int64) -> MQTTProperties {
        var properties: MQTTProperties = []
        if let format { properties.append(.payloadFormatIndicator, .byte(format)) }
        if expiresAt > 0 {
            let remaining = max(1, (expiresAt - nowMillis + 999) / 1000)
            properties.append(.messageExpiryInterval, .fourByteInteger(UInt32(clamping: remaining)))
        }
        if let contentType { properties.append(.contentType, .string(contentType)) }
        if let responseTopic { properties.append(.responseTopic, .string(responseTopic)) }
        if let correlation, let data = Data(base64Encoded: correlation) { properties.append(.correlationData, .binary(Array(data))) }
        if isForwarded {
            for pair in user ?? [] where pair.count == 2 { properties.append(.userProperty, .stringPair(pair[0], pair[1])) }
        } else {
            properties.append(.userProperty, .stringPair("message-id", id))
        }
        for identifier in subscriptionIdentifiers { properties.append(.subscriptionIdentifier, .variableInteger(identifier)) }
        return properties
    }

    /// The payload bytes in a buffer (decoded from base64 straight into it).
    func payloadBuffer() -> ByteBuffer {
        guard let data = Data(base64Encoded: payload) else { return ByteBuffer() }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(data.count)
        buffer.writeBytes(data)
        return buffer
    }

    /// A size the encoded PUBLISH does not exceed, to honour a client's maximum packet size.
    func encodedSizeBound(topicAliasOnly: Bool) -> Int {
        var size = 16 + (topicAliasOnly ? 0 : topic.utf8.count) + payload.utf8.count * 3 / 4 + 3
        size += (contentType?.utf8.count ?? 0) + (responseTopic?.utf8.count ?? 0) + (correlation?.utf8.count ?? 0) + id.utf8.count + 64
        for pair in user ?? [] { size += pair.reduce(4) { $0 + $1.utf8.count } }
        return size
    }
}
