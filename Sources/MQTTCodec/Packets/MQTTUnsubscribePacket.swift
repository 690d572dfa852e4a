import NIOCore

/// UNSUBSCRIBE: topic filters to remove.
public struct MQTTUnsubscribePacket: Hashable, Sendable {
    public var packetIdentifier: UInt16
    public var properties: MQTTProperties
    public var topicFilters: [String]

    public init(packetIdentifier: UInt16, topicFilters: [String], properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.properties = properties
        self.topicFilters = topicFilters
    }

    static func read(from body: inout ByteBuffer, version: MQTTProtocolVersion) throws -> MQTTUnsubscribePacket {
        let id = try body.mqttReadUInt16()
        guard id != 0 else { throw MQTTCodecError(.protocolViolation, "packet identifier 0") }
        let properties = version.hasProperties ? try MQTTProperties.read(from: &body) : []
        var filters: [String] = []
        while body.readableBytes > 0 { filters.append(try body.mqttReadString()) }
        guard !filters.isEmpty else { throw MQTTCodecError(.protocolViolation, "UNSUBSCRIBE without topic filters") }
        return MQTTUnsubscribePacket(packetIdentifier: id, topicFilters: filters, properties: properties)
    }

    func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws {
        buffer.writeInteger(packetIdentifier)
        if version.hasProperties { try properties.write(to: &buffer) }
        for filter in topicFilters { try buffer.mqttWriteString(filter) }
    }
}
