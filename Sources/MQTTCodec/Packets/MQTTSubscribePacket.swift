import NIOCore

/// SUBSCRIBE: one or more topic filters with their options.
public struct MQTTSubscribePacket: Hashable, Sendable {
    /// Subscription options (the 3.1.1 byte holds only the QoS).
    public struct Options: Hashable, Sendable {
        public enum RetainHandling: UInt8, Hashable, Sendable {
            case sendOnSubscribe = 0
            case sendOnSubscribeIfNew = 1
            case doNotSend = 2
        }

        public var qos: MQTTQoS
        public var noLocal: Bool
        public var retainAsPublished: Bool
        public var retainHandling: RetainHandling

        public init(qos: MQTTQoS, noLocal: Bool = false, retainAsPublished: Bool = false, retainHandling: RetainHandling = .sendOnSubscribe)
        {
            self.qos = qos
            self.noLocal = noLocal
            self.retainAsPublished = retainAsPublished
            self.retainHandling = retainHandling
        }
    }

    /// A topic filter and its options.
    public struct Subscription: Hashable, Sendable {
        public var topicFilter: String
        public var options: Options
        public init(topicFilter: String, options: Options) {
            self.topicFilter = topicFilter
            self.options = options
        }
    }

    public var packetIdentifier: UInt16
    public var properties: MQTTProperties
    public var subscriptions: [Subscription]

    public init(packetIdentifier: UInt16, subscriptions: [Subscription], properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.properties = properties
        self.subscriptions = subscriptions
    }

    static func read(from body: inout ByteBuffer, version: MQTTProtocolVersion) throws -> MQTTSubscribePacket {
        let id = try body.mqttReadUInt16()
        guard id != 0 else { throw MQTTCodecError(.protocolViolation, "packet identifier 0") }
        let properties = version.hasProperties ? try MQTTProperties.read(from: &body) : []
        var subscriptions: [Subscription] = []
        while body.readableBytes > 0 {
            let filter = try body.mqttReadString()
            let byte = try body.mqttReadByte()
            let reservedMask: UInt8 = version.hasProperties ? 0xC0 : 0xFC
            guard byte & reservedMask == 0 else { throw MQTTCodecError(.protocolViolation, "reserved subscription option bits are set") }
            guard let qos = MQTTQoS(rawValue: byte & 0x03) else { throw MQTTCodecError(.protocolViolation, "subscription QoS 3") }
            guard let handling = Options.RetainHandling(rawValue: (byte >> 4) & 0x03) else {
                throw MQTTCodecError(.protocolViolation, "retain handling 3")
            }
            let options = Options(qos: qos, noLocal: byte & 0x04 != 0, retainAsPublished: byte & 0x08 != 0, retainHandling: handling)
            subscriptions.append(Subscription(topicFilter: filter, options: options))
        }
        guard !subscriptions.isEmpty else { throw MQTTCodecError(.protocolViolation, "SUBSCRIBE without topic filters") }
        return MQTTSubscribePacket(packetIdentifier: id, subscriptions: subscriptions, properties: properties)
    }

    func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws {
        buffer.writeInteger(packetIdentifier)
        if version.hasProperties { try properties.write(to: &buffer) }
        for subscription in subscriptions {
            try buffer.mqttWriteString(subscription.topicFilter)
            let o = subscription.options
            var byte = o.qos.rawValue
            if version.hasProperties {
                if o.noLocal { byte |= 0x04 }
                if o.retainAsPublished { byte |= 0x08 }
                byte |= o.retainHandling.rawValue << 4
            }
            buffer.writeInteger(byte)
        }
    }
}
