import NIOCore

/// PUBLISH: an application message, in either direction.
public struct MQTTPublishPacket: Hashable, Sendable {
    public var dup: Bool
    public var qos: MQTTQoS
    public var retain: Bool
    /// The topic; empty only in MQTT 5 when a topic alias property stands in for it.
    public var topicName: String
    /// Present exactly when `qos` is 1 or 2.
    public var packetIdentifier: UInt16?
    /// PUBLISH properties (MQTT 5).
    public var properties: MQTTProperties
    /// The application payload, exactly as sent.
    public var payload: ByteBuffer

    public init(
        topicName: String,
        payload: ByteBuffer,
        qos: MQTTQoS = .atMostOnce,
        packetIdentifier: UInt16? = nil,
        dup: Bool = false,
        retain: Bool = false,
        properties: MQTTProperties = []
    ) {
        self.dup = dup
        self.qos = qos
        self.retain = retain
        self.topicName = topicName
        self.packetIdentifier = packetIdentifier
        self.properties = properties
        self.payload = payload
    }

    var fixedHeaderFlags: UInt8 {
        (dup ? 0x08 : 0) | (qos.rawValue << 1) | (retain ? 0x01 : 0)
    }

    static func read(from body: inout ByteBuffer, flags: UInt8, version: MQTTProtocolVersion) throws -> MQTTPublishPacket {
        guard let qos = MQTTQoS(rawValue: (flags >> 1) & 0x03) else { throw MQTTCodecError(.invalidFlags, "PUBLISH with QoS 3") }
        let dup = flags & 0x08 != 0
        if qos == .atMostOnce && dup { throw MQTTCodecError(.invalidFlags, "PUBLISH QoS 0 with DUP set") }
        let topic = try body.mqttReadString()
        // Empty is allowed here: an MQTT 5 PUBLISH may name its topic by alias only.
        if MQTTTopic.hasWildcard(topic) {
            throw MQTTCodecError(.protocolViolation, "topic name contains a wildcard")
        }
        var packetIdentifier: UInt16?
        if qos != .atMostOnce {
            let id = try body.mqttReadUInt16()
            guard id != 0 else { throw MQTTCodecError(.protocolViolation, "packet identifier 0") }
            packetIdentifier = id
        }
        let properties = version.hasProperties ? try MQTTProperties.read(from: &body) : []
        if topic.isEmpty && properties[.topicAlias] == nil {
            throw MQTTCodecError(.protocolViolation, "empty topic name")
        }
        let payload = body.readSlice(length: body.readableBytes)!
        return MQTTPublishPacket(
            topicName: topic, payload: payload, qos: qos, packetIdentifier: packetIdentifier, dup: dup, retain: flags & 0x01 != 0,
            properties: properties)
    }

    func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws {
        try buffer.mqttWriteString(topicName)
        if qos != .atMostOnce {
            guard let packetIdentifier, packetIdentifier != 0 else {
                throw MQTTCodecError(.protocolViolation, "QoS \(qos.rawValue) PUBLISH needs a packet identifier")
            }
            buffer.writeInteger(packetIdentifier)
        }
        if version.hasProperties { try properties.write(to: &buffer) }
        buffer.writeImmutableBuffer(payload)
    }
}
