import NIOCore

/// CONNACK: the server's answer to CONNECT.
public struct MQTTConnAckPacket: Hashable, Sendable {
    /// Whether the server resumed a stored session.
    public var sessionPresent: Bool
    /// The 3.1.1 return code or the 5.0 reason code.
    public var reasonCode: MQTTReasonCode
    /// CONNACK properties (MQTT 5).
    public var properties: MQTTProperties

    public init(sessionPresent: Bool = false, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
        self.sessionPresent = sessionPresent
        self.reasonCode = reasonCode
        self.properties = properties
    }

    static func read(from body: inout ByteBuffer, version: MQTTProtocolVersion) throws -> MQTTConnAckPacket {
        let flags = try body.mqttReadByte()
        guard flags & 0xFE == 0 else { throw MQTTCodecError(.protocolViolation, "reserved CONNACK flags are set") }
        let code = MQTTReasonCode(try body.mqttReadByte())
        let properties = version.hasProperties && body.readableBytes > 0 ? try MQTTProperties.read(from: &body) : []
        return MQTTConnAckPacket(sessionPresent: flags & 0x01 != 0, reasonCode: code, properties: properties)
    }

    func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws {
        buffer.writeInteger(UInt8(sessionPresent ? 1 : 0))
        buffer.writeInteger(reasonCode.rawValue)
        if version.hasProperties { try properties.write(to: &buffer) }
    }
}
