import NIOCore

/// CONNECT: the first packet a client sends.
public struct MQTTConnectPacket: Hashable, Sendable {
    /// A will message: published by the server if the connection ends without DISCONNECT.
    public struct Will: Hashable, Sendable {
        public var topic: String
        public var payload: ByteBuffer
        public var qos: MQTTQoS
        public var retain: Bool
        public var properties: MQTTProperties

        public init(topic: String, payload: ByteBuffer, qos: MQTTQoS = .atMostOnce, retain: Bool = false, properties: MQTTProperties = []) {
            self.topic = topic
            self.payload = payload
            self.qos = qos
            self.retain = retain
            self.properties = properties
        }
    }

    /// "MQTT" for 3.1.1 and 5.0, "MQIsdp" for 3.1.
    public var protocolName: String
    /// The protocol level. An unsupported level decodes with the remaining fields empty, so the
    /// server can still answer with the right CONNACK.
    public var protocolVersion: MQTTProtocolVersion
    /// Clean session (3.1.1) or clean start (5.0).
    public var cleanStart: Bool
    /// Keep alive in seconds; 0 disables it.
    public var keepAlive: UInt16
    public var clientIdentifier: String
    public var will: Will?
    public var username: String?
    public var password: [UInt8]?
    /// CONNECT properties (MQTT 5).
    public var properties: MQTTProperties

    public init(
        protocolVersion: MQTTProtocolVersion = .v3_1_1,
        clientIdentifier: String,
        cleanStart: Bool = true,
        keepAlive: UInt16 = 60,
        username: String? = nil,
        password: [UInt8]? = nil,
        will: Will? = nil,
        properties: MQTTProperties = []
    ) {
        self.protocolName = protocolVersion == .v3_1 ? "MQIsdp" : "MQTT"
        self.protocolVersion = protocolVersion
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.clientIdentifier = clientIdentifier
        self.will = will
        self.username = username
        self.password = password
        self.properties = properties
    }

    /// The password as UTF-8 text, if it is valid UTF-8.
    public var passwordString: String? {
        password.flatMap { String(validating: $0, as: UTF8.self) }
    }

    static func read(from body: inout ByteBuffer) throws -> MQTTConnectPacket {
        let name = try body.mqttReadString()
        guard name == "MQTT" || name == "MQIsdp" else {
            throw MQTTCodecError(.protocolViolation, "unknown protocol name \(name.debugDescription)")
        }
        let version = MQTTProtocolVersion(rawValue: try body.mqttReadByte())
        var packet = MQTTConnectPacket(protocolVersion: version, clientIdentifier: "")
        packet.protocolName = name
        guard version.isSupported else {
            body.moveReaderIndex(forwardBy: body.readableBytes)
            return packet
        }
        let flags = try body.mqttReadByte()
        guard flags & 0x01 == 0 else { throw MQTTCodecError(.protocolViolation, "reserved CONNECT flag is set") }
        packet.cleanStart = flags & 0x02 != 0
        let hasWill = flags & 0x04 != 0
        let willQoSBits = (flags >> 3) & 0x03
        let willRetain = flags & 0x20 != 0
        let hasPassword = flags & 0x40 != 0
        let hasUsername = flags & 0x80 != 0
        guard let willQoS = MQTTQoS(rawValue: willQoSBits) else { throw MQTTCodecError(.protocolViolation, "will QoS 3") }
        if !hasWill && (willQoSBits != 0 || willRetain) {
            throw MQTTCodecError(.protocolViolation, "will QoS or retain set without a will")
        }
        if version < .v5 && hasPassword && !hasUsername {
            throw MQTTCodecError(.protocolViolation, "password without user name")
        }
        packet.keepAlive = try body.mqttReadUInt16()
        if version.hasProperties { packet.properties = try MQTTProperties.read(from: &body) }
        packet.clientIdentifier = try body.mqttReadString()
        if hasWill {
            let properties = version.hasProperties ? try MQTTProperties.read(from: &body) : []
            let topic = try body.mqttReadString()
            let payloadLength = Int(try body.mqttReadUInt16())
            guard let payload = body.readSlice(length: payloadLength) else {
                throw MQTTCodecError(.malformedPacket, "will payload exceeds the packet")
            }
            packet.will = Will(topic: topic, payload: payload, qos: willQoS, retain: willRetain, properties: properties)
        }
        if hasUsername { packet.username = try body.mqttReadString() }
        if hasPassword { packet.password = try body.mqttReadBinary() }
        return packet
    }

    func write(to buffer: inout ByteBuffer) throws {
        try buffer.mqttWriteString(protocolName)
        buffer.writeInteger(protocolVersion.rawValue)
        var flags: UInt8 = 0
        if cleanStart { flags |= 0x02 }
        if let will {
            flags |= 0x04 | (will.qos.rawValue << 3)
            if will.retain { flags |= 0x20 }
        }
        if password != nil { flags |= 0x40 }
        if username != nil { flags |= 0x80 }
        buffer.writeInteger(flags)
        buffer.writeInteger(keepAlive)
        if protocolVersion.hasProperties { try properties.write(to: &buffer) }
        try buffer.mqttWriteString(clientIdentifier)
        if let will {
            if protocolVersion.hasProperties { try will.properties.write(to: &buffer) }
            try buffer.mqttWriteString(will.topic)
            guard will.payload.readableBytes <= Int(UInt16.max) else { throw MQTTCodecError(.valueTooLarge, "will payload too large") }
            buffer.writeInteger(UInt16(will.payload.readableBytes))
            buffer.writeImmutableBuffer(will.payload)
        }
        if let username { try buffer.mqttWriteString(username) }
        if let password { try buffer.mqttWriteBinary(password) }
    }
}
