import NIOCore

/// Every MQTT control packet, decoded.
public enum MQTTPacket: Hashable, Sendable {
    case connect(MQTTConnectPacket)
    case connAck(MQTTConnAckPacket)
    case publish(MQTTPublishPacket)
    case pubAck(MQTTAckPacket)
    case pubRec(MQTTAckPacket)
    case pubRel(MQTTAckPacket)
    case pubComp(MQTTAckPacket)
    case subscribe(MQTTSubscribePacket)
    case subAck(MQTTSubAckPacket)
    case unsubscribe(MQTTUnsubscribePacket)
    case unsubAck(MQTTSubAckPacket)
    case pingReq
    case pingResp
    case disconnect(MQTTDisconnectPacket)
    /// AUTH (MQTT 5 only).
    case auth(MQTTDisconnectPacket)

    /// The packet type nibble of the fixed header.
    public var typeCode: UInt8 {
        switch self {
        case .connect: return 1
        case .connAck: return 2
        case .publish: return 3
        case .pubAck: return 4
        case .pubRec: return 5
        case .pubRel: return 6
        case .pubComp: return 7
        case .subscribe: return 8
        case .subAck: return 9
        case .unsubscribe: return 10
        case .unsubAck: return 11
        case .pingReq: return 12
        case .pingResp: return 13
        case .disconnect: return 14
        case .auth: return 15
        }
    }

    private var fixedHeaderFlags: UInt8 {
        switch self {
        case .publish(let p): return p.fixedHeaderFlags
        case .pubRel, .subscribe, .unsubscribe: return 0x02
        default: return 0
        }
    }

    /// Decodes one packet from the front of `buffer`.
    ///
    /// Returns `nil` (and leaves `buffer` untouched) when the packet is not complete yet;
    /// throws when the peer sent something the specification forbids or that exceeds
    /// `maximumPacketSize` (the whole packet, fixed header included).
    public static func read(
        from buffer: inout ByteBuffer,
        version: MQTTProtocolVersion,
        maximumPacketSize: Int = Int(mqttMaximumVariableInteger) + 5
    ) throws -> MQTTPacket? {
        var peek = buffer
        guard let first = peek.readInteger(as: UInt8.self) else { return nil }
        // Check the first byte before waiting for the body, so garbage fails at once.
        try validateFixedHeader(first, version: version)
        guard let remaining = try peek.mqttReadVariableIntegerIfComplete() else { return nil }
        let headerSize = peek.readerIndex - buffer.readerIndex
        let total = headerSize + Int(remaining)
        guard total <= maximumPacketSize else {
            throw MQTTCodecError(
                .packetTooLarge, "packet of \(total) bytes exceeds the maximum of \(maximumPacketSize)",
                bytes: Array(buffer.readableBytesView.prefix(headerSize)))
        }
        guard var body = peek.readSlice(length: Int(remaining)) else { return nil }
        let type = first >> 4
        let flags = first & 0x0F
        do {
            let packet = try decodeBody(type: type, flags: flags, body: &body, version: version)
            guard body.readableBytes == 0 else {
                throw MQTTCodecError(.malformedPacket, "\(body.readableBytes) unexpected bytes at the end of the packet")
            }
            buffer.moveReaderIndex(forwardBy: total)
            return packet
        } catch var error as MQTTCodecError {
            if error.bytes.isEmpty { error.bytes = Array(buffer.readableBytesView.prefix(min(total, 64))) }
            throw error
        }
    }

    private static func validateFixedHeader(_ first: UInt8, version: MQTTProtocolVersion) throws {
        let type = first >> 4
        let flags = first & 0x0F
        let expected: UInt8
        switch type {
        case 0:
            throw MQTTCodecError(.invalidPacketType, "packet type 0 is reserved", bytes: [first])
        case 15 where !version.hasProperties:
            throw MQTTCodecError(.invalidPacketType, "AUTH is not valid in MQTT \(version)", bytes: [first])
        case 3:
            return
        case 6, 8, 10:
            expected = 2
        default:
            expected = 0
        }
        guard flags == expected else {
            throw MQTTCodecError(.invalidFlags, "packet type \(type) with flags 0x\(String(flags, radix: 16))", bytes: [first])
        }
    }

    private static func decodeBody(type: UInt8, flags: UInt8, body: inout ByteBuffer, version: MQTTProtocolVersion) throws -> MQTTPacket {
        func requireFlags(_ expected: UInt8) throws {
            guard flags == expected else {
                throw MQTTCodecError(.invalidFlags, "packet type \(type) with flags 0x\(String(flags, radix: 16))")
            }
        }
        switch type {
        case 1:
            try requireFlags(0)
            return .connect(try MQTTConnectPacket.read(from: &body))
        case 2:
            try requireFlags(0)
            return .connAck(try MQTTConnAckPacket.read(from: &body, version: version))
        case 3:
            return .publish(try MQTTPublishPacket.read(from: &body, flags: flags, version: version))
        case 4:
            try requireFlags(0)
            return .pubAck(try MQTTAckPacket.read(from: &body, version: version))
        case 5:
            try requireFlags(0)
            return .pubRec(try MQTTAckPacket.read(from: &body, version: version))
        case 6:
            try requireFlags(2)
            return .pubRel(try MQTTAckPacket.read(from: &body, version: version))
        case 7:
            try requireFlags(0)
            return .pubComp(try MQTTAckPacket.read(from: &body, version: version))
        case 8:
            try requireFlags(2)
            return .subscribe(try MQTTSubscribePacket.read(from: &body, version: version))
        case 9:
            try requireFlags(0)
            return .subAck(try MQTTSubAckPacket.read(from: &body, version: version))
        case 10:
            try requireFlags(2)
            return .unsubscribe(try MQTTUnsubscribePacket.read(from: &body, version: version))
        case 11:
            try requireFlags(0)
            // MQTT 3.1.1's UNSUBACK is its packet identifier and nothing else (3.11.1).
            guard version.hasProperties || body.readableBytes == 2 else {
                throw MQTTCodecError(
                    .malformedPacket, "UNSUBACK of \(body.readableBytes) bytes (3.1.1: 2)", bytes: Array(body.readableBytesView))
            }
            return .unsubAck(try MQTTSubAckPacket.read(from: &body, version: version))
        case 12:
            try requireFlags(0)
            return .pingReq
        case 13:
            try requireFlags(0)
            return .pingResp
        case 14:
            try requireFlags(0)
            return .disconnect(try MQTTDisconnectPacket.read(from: &body, version: version))
        case 15 where version.hasProperties:
            try requireFlags(0)
            return .auth(try MQTTDisconnectPacket.read(from: &body, version: version))
        default:
            throw MQTTCodecError(.invalidPacketType, "packet type \(type) is not valid in MQTT \(version)")
        }
    }

    /// Appends the encoded packet (fixed header included) to `buffer`.
    public func write(to buffer: inout ByteBuffer, version: MQTTProtocolVersion) throws {
        var body = ByteBuffer()
        switch self {
        case .connect(let p): try p.write(to: &body)
        case .connAck(let p): try p.write(to: &body, version: version)
        case .publish(let p): try p.write(to: &body, version: version)
        case .pubAck(let p), .pubRec(let p), .pubRel(let p), .pubComp(let p): try p.write(to: &body, version: version)
        case .subscribe(let p): try p.write(to: &body, version: version)
        case .subAck(let p): try p.write(to: &body, version: version)
        case .unsubscribe(let p): try p.write(to: &body, version: version)
        // 3.1.1 UNSUBACK has no payload; 5.0 carries one reason code per filter.
        case .unsubAck(let p): try p.write(to: &body, version: version, includeReasonCodes: version.hasProperties)
        case .pingReq, .pingResp: break
        case .disconnect(let p): try p.write(to: &body, version: version)
        // AUTH may leave out the property length only together with a success reason code.
        case .auth(let p): try p.write(to: &body, version: version, omitEmptyProperties: false)
        }
        guard body.readableBytes <= Int(mqttMaximumVariableInteger) else {
            throw MQTTCodecError(.valueTooLarge, "packet body of \(body.readableBytes) bytes exceeds the MQTT maximum")
        }
        buffer.writeInteger(typeCode << 4 | fixedHeaderFlags)
        buffer.mqttWriteVariableInteger(UInt32(body.readableBytes))
        buffer.writeImmutableBuffer(body)
    }
}
