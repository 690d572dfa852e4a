import NIOCore

/// PUBACK, PUBREC, PUBREL and PUBCOMP: they share one layout.
public struct MQTTAckPacket: Hashable, Sendable {
    public var packetIdentifier: UInt16
    /// Always success in 3.1.1.
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.reasonCode = reasonCode
        self.properties = properties
    }

    static func read(from body: inout ByteBuffer, version: MQTTProtocolVersion) throws -> MQTTAckPacket {
        let id = try body.mqttReadUInt16()
        guard version.hasProperties, body.readableBytes > 0 else { return MQTTAckPacket(packetIdentifier: id) }
        let code = MQTTReasonCode(try body.mqttReadByte())
        let properties = body.readableBytes > 0 ? try MQTTProperties.read(from: &body) : []
        return MQTTAckPacket(packetIdentifier: id, reasonCode: code, properties: properties)
    }

    func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws {
        buffer.writeInteger(packetIdentifier)
        // MQTT 5 lets the reason code and properties be left out when they are the defaults.
        guard version.hasProperties, reasonCode != .success || !properties.isEmpty else { return }
        buffer.writeInteger(reasonCode.rawValue)
        if !properties.isEmpty { try properties.write(to: &buffer) }
    }
}
