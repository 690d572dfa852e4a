import NIOCore

/// SUBACK (and, with ``MQTTPacket/unsubAck(_:)``, UNSUBACK): one reason code per filter.
public struct MQTTSubAckPacket: Hashable, Sendable {
    public var packetIdentifier: UInt16
    public var properties: MQTTProperties
    public var reasonCodes: [MQTTReasonCode]

    public init(packetIdentifier: UInt16, reasonCodes: [MQTTReasonCode], properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.properties = properties
        self.reasonCodes = reasonCodes
    }

    static func read(from body: inout ByteBuffer, version: MQTTProtocolVersion) throws -> MQTTSubAckPacket {
        let id = try body.mqttReadUInt16()
        let properties = version.hasProperties ? try MQTTProperties.read(from: &body) : []
        var codes: [MQTTReasonCode] = []
        while body.readableBytes > 0 { codes.append(MQTTReasonCode(try body.mqttReadByte())) }
        return MQTTSubAckPacket(packetIdentifier: id, reasonCodes: codes, properties: properties)
    }

    func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion, includeReasonCodes: Bool = true) throws {
        buffer.writeInteger(packetIdentifier)
        if version.hasProperties { try properties.write(to: &buffer) }
        if includeReasonCodes {
            for code in reasonCodes { buffer.writeInteger(code.rawValue) }
        }
    }
}
