import MQTTCodec
import NIOCore
import Testing

/// Every MQTT 5.0 property (section 2.2.2.2) and every reason code (section 2.4), byte-exact
/// both ways: each property alone in an AUTH packet, each reason code in a PUBACK.
struct PropertyAndReasonCodeTests {
    struct PropertyVector: CustomTestStringConvertible, Sendable {
        let property: MQTTProperty
        let bytes: String
        var testDescription: String { "property 0x" + String(property.identifier.rawValue, radix: 16) }
    }

    static let properties: [PropertyVector] = [
        .init(property: .init(.payloadFormatIndicator, .byte(1)), bytes: "01 01"),
        .init(property: .init(.messageExpiryInterval, .fourByteInteger(300)), bytes: "02 00 00 01 2C"),
        .init(property: .init(.contentType, .string("j")), bytes: "03 00 01 'j'"),
        .init(property: .init(.responseTopic, .string("r/t")), bytes: "08 00 03 'r/t'"),
        .init(property: .init(.correlationData, .binary([1, 2])), bytes: "09 00 02 01 02"),
        .init(property: .init(.subscriptionIdentifier, .variableInteger(200)), bytes: "0B C8 01"),
        .init(property: .init(.sessionExpiryInterval, .fourByteInteger(3600)), bytes: "11 00 00 0E 10"),
        .init(property: .init(.assignedClientIdentifier, .string("a")), bytes: "12 00 01 'a'"),
        .init(property: .init(.serverKeepAlive, .twoByteInteger(60)), bytes: "13 00 3C"),
        .init(property: .init(.authenticationMethod, .string("m")), bytes: "15 00 01 'm'"),
        .init(property: .init(.authenticationData, .binary([9])), bytes: "16 00 01 09"),
        .init(property: .init(.requestProblemInformation, .byte(0)), bytes: "17 00"),
        .init(property: .init(.willDelayInterval, .fourByteInteger(5)), bytes: "18 00 00 00 05"),
        .init(property: .init(.requestResponseInformation, .byte(1)), bytes: "19 01"),
        .init(property: .init(.responseInformation, .string("i")), bytes: "1A 00 01 'i'"),
        .init(property: .init(.serverReference, .string("s")), bytes: "1C 00 01 's'"),
        .init(property: .init(.reasonString, .string("why")), bytes: "1F 00 03 'why'"),
        .init(property: .init(.receiveMaximum, .twoByteInteger(10)), bytes: "21 00 0A"),
        .init(property: .init(.topicAliasMaximum, .twoByteInteger(5)), bytes: "22 00 05"),
        .init(property: .init(.topicAlias, .twoByteInteger(1)), bytes: "23 00 01"),
        .init(property: .init(.maximumQoS, .byte(1)), bytes: "24 01"),
        .init(property: .init(.retainAvailable, .byte(0)), bytes: "25 00"),
        .init(property: .init(.userProperty, .stringPair("k", "v")), bytes: "26 00 01 'k' 00 01 'v'"),
        .init(property: .init(.maximumPacketSize, .fourByteInteger(1024)), bytes: "27 00 00 04 00"),
        .init(property: .init(.wildcardSubscriptionAvailable, .byte(0)), bytes: "28 00"),
        .init(property: .init(.subscriptionIdentifierAvailable, .byte(0)), bytes: "29 00"),
        .init(property: .init(.sharedSubscriptionAvailable, .byte(0)), bytes: "2A 00"),
    ]

    /// AUTH with reason 0x18 and just this property.
    static func authBytes(_ vector: PropertyVector) -> ByteBuffer {
        let property = hex(vector.bytes)
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(0xF0))
        buffer.writeInteger(UInt8(2 + property.readableBytes))
        buffer.writeInteger(UInt8(0x18))
        buffer.writeInteger(UInt8(property.readableBytes))
        buffer.writeImmutableBuffer(property)
        return buffer
    }

    @Test(arguments: properties)
    func propertyDecodes(_ vector: PropertyVector) throws {
        var buffer = Self.authBytes(vector)
        let packet = try MQTTPacket.read(from: &buffer, version: .v5)
        #expect(packet == .auth(MQTTDisconnectPacket(reasonCode: .continueAuthentication, properties: [vector.property])))
    }

    @Test(arguments: properties)
    func propertyEncodes(_ vector: PropertyVector) throws {
        var buffer = ByteBuffer()
        try MQTTPacket.auth(MQTTDisconnectPacket(reasonCode: .continueAuthentication, properties: [vector.property]))
            .write(to: &buffer, version: .v5)
        #expect(buffer.hexDump == Self.authBytes(vector).hexDump)
    }

    @Test func everyPropertyIdentifierIsCovered() {
        let covered = Set(Self.properties.map(\.property.identifier.rawValue))
        let defined: Set<UInt32> = [
            0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C, 0x1F, 0x21, 0x22,
            0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
        ]
        #expect(covered == defined)
    }

    @Test func aPropertyWithTheWrongValueTypeIsNotEncoded() {
        var buffer = ByteBuffer()
        #expect(throws: MQTTCodecError.self) {
            try MQTTPacket.auth(MQTTDisconnectPacket(properties: [.init(.topicAlias, .string("x"))])).write(to: &buffer, version: .v5)
        }
    }

    /// Each named reason code and the byte MQTT 5.0 table 2-6 gives it.
    static let reasonCodes: [(MQTTReasonCode, UInt8)] = [
        (.success, 0x00), (.grantedQoS1, 0x01), (.grantedQoS2, 0x02), (.disconnectWithWill, 0x04), (.noMatchingSubscribers, 0x10),
        (.noSubscriptionExisted, 0x11), (.continueAuthentication, 0x18), (.reAuthenticate, 0x19), (.unspecifiedError, 0x80),
        (.malformedPacket, 0x81), (.protocolError, 0x82), (.implementationSpecificError, 0x83), (.unsupportedProtocolVersion, 0x84),
        (.clientIdentifierNotValid, 0x85), (.badUserNameOrPassword, 0x86), (.notAuthorized, 0x87), (.serverUnavailable, 0x88),
        (.serverBusy, 0x89), (.banned, 0x8A), (.serverShuttingDown, 0x8B), (.badAuthenticationMethod, 0x8C), (.keepAliveTimeout, 0x8D),
        (.sessionTakenOver, 0x8E), (.topicFilterInvalid, 0x8F), (.topicNameInvalid, 0x90), (.packetIdentifierInUse, 0x91),
        (.packetIdentifierNotFound, 0x92), (.receiveMaximumExceeded, 0x93), (.topicAliasInvalid, 0x94), (.packetTooLarge, 0x95),
        (.messageRateTooHigh, 0x96), (.quotaExceeded, 0x97), (.administrativeAction, 0x98), (.payloadFormatInvalid, 0x99),
        (.retainNotSupported, 0x9A), (.qosNotSupported, 0x9B), (.useAnotherServer, 0x9C), (.serverMoved, 0x9D),
        (.sharedSubscriptionsNotSupported, 0x9E), (.connectionRateExceeded, 0x9F), (.maximumConnectTime, 0xA0),
        (.subscriptionIdentifiersNotSupported, 0xA1), (.wildcardSubscriptionsNotSupported, 0xA2),
    ]

    @Test func everyReasonCodeHasItsByteAndRoundTripsInAPUBACK() throws {
        #expect(Self.reasonCodes.count == 43)
        for (code, byte) in Self.reasonCodes {
            #expect(code.rawValue == byte, "\(code)")
            // PUBACK id 1 with the reason code; success takes the short form (MQTT 5 3.4.2.1).
            let expected = byte == 0 ? "40 02 00 01" : "40 03 00 01 " + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            var encoded = ByteBuffer()
            try MQTTPacket.pubAck(MQTTAckPacket(packetIdentifier: 1, reasonCode: code)).write(to: &encoded, version: .v5)
            #expect(encoded.hexDump == hex(expected).hexDump, "\(code)")
            var bytes = hex(expected)
            #expect(try MQTTPacket.read(from: &bytes, version: .v5) == .pubAck(MQTTAckPacket(packetIdentifier: 1, reasonCode: code)))
        }
    }
}
