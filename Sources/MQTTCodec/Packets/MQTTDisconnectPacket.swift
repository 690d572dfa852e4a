import NIOCore

/// DISCONNECT (both directions in MQTT 5) and AUTH share this layout: a reason code and properties.
public struct MQTTDisconnectPacket: Hashable, Sendable {
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
        self.reasonCode = reasonCode
        self.properties = properties
    }

    static func read(from body: inout ByteBuffer, version: MQTTProtocolVersion) throws -> MQTTDisconnectPacket {
        guard version.hasProperties, body.readableBytes > 0 else { return MQTTDisconnectPacket() }
        let code = MQTTReasonCode(try body.mqttReadByte())
        let properties = body.readableBytes > 0 ? try MQTTProperties.read(from: &body) : []
        return MQTTDisconnectPacket(reasonCode: code, properties: properties)
    }

    func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion, omitEmptyProperties: Bool = true) throws {
        guard version.hasProperties, reasonCode != .success || !properties.isEmpty else { return }
        buffer.writeInteger(reasonCode.rawValue)
        if !properties.isEmpty || !omitEmptyProperties { try properties.write(to: &buffer) }
    }
}
