import MQTTCodec
import NIOCore
import Testing

/// Byte-exact vectors, checked both ways: decode(bytes) == packet and encode(packet) == bytes.
struct GoldenVectorTests {
    struct Vector: CustomTestStringConvertible, Sendable {
        let name: String
        let bytes: String
        let packet: MQTTPacket
        let version: MQTTProtocolVersion
        var testDescription: String { name }
    }

    static func payload(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    static let v311: [Vector] = [
        Vector(
            name: "CONNECT with user, password, clean session",
            bytes: "10 14 00 04 'MQTT' 04 C2 00 3C 00 02 't1' 00 01 'u' 00 01 'p'",
            packet: .connect(
                MQTTConnectPacket(clientIdentifier: "t1", cleanStart: true, keepAlive: 60, username: "u", password: Array("p".utf8))),
            version: .v3_1_1
        ),
        Vector(
            name: "CONNECT with will QoS 1 retained, clean session off",
            bytes: "10 18 00 04 'MQTT' 04 2C 00 0A 00 01 'c' 00 03 'w/t' 00 04 'gone'",
            packet: .connect(
                MQTTConnectPacket(
                    clientIdentifier: "c", cleanStart: false, keepAlive: 10,
                    will: .init(topic: "w/t", payload: payload("gone"), qos: .atLeastOnce, retain: true)
                )
            ),
            version: .v3_1_1
        ),
        Vector(name: "CONNACK accepted", bytes: "20 02 00 00", packet: .connAck(MQTTConnAckPacket()), version: .v3_1_1),
        Vector(
            name: "CONNACK session present",
            bytes: "20 02 01 00",
            packet: .connAck(MQTTConnAckPacket(sessionPresent: true)),
            version: .v3_1_1
        ),
        Vector(
            name: "CONNACK not authorized",
            bytes: "20 02 00 05",
            packet: .connAck(MQTTConnAckPacket(reasonCode: .v3NotAuthorized)),
            version: .v3_1_1
        ),
        Vector(
            name: "PUBLISH QoS 1",
            bytes: "32 09 00 03 'a/b' 00 0A 'hi'",
            packet: .publish(MQTTPublishPacket(topicName: "a/b", payload: payload("hi"), qos: .atLeastOnce, packetIdentifier: 10)),
            version: .v3_1_1
        ),
        Vector(
            name: "PUBLISH QoS 0 retained",
            bytes: "31 05 00 01 'a' 'hi'",
            packet: .publish(MQTTPublishPacket(topicName: "a", payload: payload("hi"), retain: true)),
            version: .v3_1_1
        ),
        Vector(
            name: "PUBLISH QoS 2 DUP",
            bytes: "3C 05 00 01 'a' 00 07",
            packet: .publish(MQTTPublishPacket(topicName: "a", payload: ByteBuffer(), qos: .exactlyOnce, packetIdentifier: 7, dup: true)),
            version: .v3_1_1
        ),
        Vector(name: "PUBACK", bytes: "40 02 00 0A", packet: .pubAck(MQTTAckPacket(packetIdentifier: 10)), version: .v3_1_1),
        Vector(name: "PUBREC", bytes: "50 02 00 0A", packet: .pubRec(MQTTAckPacket(packetIdentifier: 10)), version: .v3_1_1),
        Vector(name: "PUBREL", bytes: "62 02 00 0A", packet: .pubRel(MQTTAckPacket(packetIdentifier: 10)), version: .v3_1_1),
        Vector(name: "PUBCOMP", bytes: "70 02 00 0A", packet: .pubComp(MQTTAckPacket(packetIdentifier: 10)), version: .v3_1_1),
        Vector(
            name: "SUBSCRIBE",
            bytes: "82 08 00 01 00 03 'a/#' 01",
            packet: .subscribe(
                MQTTSubscribePacket(packetIdentifier: 1, subscriptions: [.init(topicFilter: "a/#", options: .init(qos: .atLeastOnce))])),
            version: .v3_1_1
        ),
        Vector(
            name: "SUBACK",
            bytes: "90 04 00 01 01 80",
            packet: .subAck(MQTTSubAckPacket(packetIdentifier: 1, reasonCodes: [.grantedQoS1, .v3SubscribeFailure])),
            version: .v3_1_1
        ),
        Vector(
            name: "UNSUBSCRIBE",
            bytes: "A2 07 00 02 00 03 'a/#'",
            packet: .unsubscribe(MQTTUnsubscribePacket(packetIdentifier: 2, topicFilters: ["a/#"])),
            version: .v3_1_1
        ),
        Vector(
            name: "UNSUBACK", bytes: "B0 02 00 02", packet: .unsubAck(MQTTSubAckPacket(packetIdentifier: 2, reasonCodes: [])),
            version: .v3_1_1),
        Vector(name: "PINGREQ", bytes: "C0 00", packet: .pingReq, version: .v3_1_1),
        Vector(name: "PINGRESP", bytes: "D0 00", packet: .pingResp, version: .v3_1_1),
        Vector(name: "DISCONNECT", bytes: "E0 00", packet: .disconnect(MQTTDisconnectPacket()), version: .v3_1_1),
    ]

    static let v5: [Vector] = [
        Vector(
            name: "CONNECT 5.0 with session expiry",
            bytes: "10 14 00 04 'MQTT' 05 02 00 3C 05 11 00 00 0E 10 00 02 't1'",
            packet: .connect(
                MQTTConnectPacket(
                    protocolVersion: .v5, clientIdentifier: "t1", keepAlive: 60,
                    properties: [.init(.sessionExpiryInterval, .fourByteInteger(3600))])
            ),
            version: .v5
        ),
        Vector(name: "CONNACK 5.0", bytes: "20 03 00 00 00", packet: .connAck(MQTTConnAckPacket()), version: .v5),
        Vector(
            name: "CONNACK 5.0 not authorized",
            bytes: "20 03 00 87 00",
            packet: .connAck(MQTTConnAckPacket(reasonCode: .notAuthorized)),
            version: .v5
        ),
        Vector(
            name: "CONNACK 5.0 with properties",
            bytes: "20 0A 00 00 07 24 01 21 00 0A 25 00",
            packet: .connAck(
                MQTTConnAckPacket(properties: [
                    .init(.maximumQoS, .byte(1)), .init(.receiveMaximum, .twoByteInteger(10)), .init(.retainAvailable, .byte(0)),
                ])
            ),
            version: .v5
        ),
        Vector(
            name: "PUBLISH 5.0 with a message-id user property",
            bytes: "32 18 00 01 'a' 00 01 11 26 00 0A 'message-id' 00 02 'm1' 'x'",
            packet: .publish(
                MQTTPublishPacket(
                    topicName: "a", payload: payload("x"), qos: .atLeastOnce, packetIdentifier: 1,
                    properties: [.init(.userProperty, .stringPair("message-id", "m1"))]
                )
            ),
            version: .v5
        ),
        Vector(
            name: "PUBACK 5.0 success, short form", bytes: "40 02 00 01", packet: .pubAck(MQTTAckPacket(packetIdentifier: 1)), version: .v5),
        Vector(
            name: "PUBACK 5.0 no matching subscribers",
            bytes: "40 03 00 01 10",
            packet: .pubAck(MQTTAckPacket(packetIdentifier: 1, reasonCode: .noMatchingSubscribers)),
            version: .v5
        ),
        Vector(
            name: "SUBSCRIBE 5.0 with options",
            bytes: "82 07 00 01 00 00 01 'a' 25",
            packet: .subscribe(
                MQTTSubscribePacket(
                    packetIdentifier: 1,
                    subscriptions: [.init(topicFilter: "a", options: .init(qos: .atLeastOnce, noLocal: true, retainHandling: .doNotSend))]
                )
            ),
            version: .v5
        ),
        Vector(
            name: "SUBACK 5.0",
            bytes: "90 04 00 01 00 01",
            packet: .subAck(MQTTSubAckPacket(packetIdentifier: 1, reasonCodes: [.grantedQoS1])),
            version: .v5
        ),
        Vector(
            name: "UNSUBACK 5.0",
            bytes: "B0 04 00 01 00 00",
            packet: .unsubAck(MQTTSubAckPacket(packetIdentifier: 1, reasonCodes: [.success])),
            version: .v5
        ),
        Vector(
            name: "DISCONNECT 5.0 session taken over",
            bytes: "E0 01 8E",
            packet: .disconnect(MQTTDisconnectPacket(reasonCode: .sessionTakenOver)),
            version: .v5
        ),
        Vector(
            name: "AUTH 5.0 continue", bytes: "F0 02 18 00", packet: .auth(MQTTDisconnectPacket(reasonCode: MQTTReasonCode(0x18))),
            version: .v5),
    ]

    @Test(arguments: v311 + v5)
    func decodes(_ vector: Vector) throws {
        var buffer = hex(vector.bytes)
        let decoded = try MQTTPacket.read(from: &buffer, version: vector.version)
        #expect(decoded == vector.packet)
        #expect(buffer.readableBytes == 0)
    }

    @Test(arguments: v311 + v5)
    func encodes(_ vector: Vector) throws {
        var buffer = ByteBuffer()
        try vector.packet.write(to: &buffer, version: vector.version)
        #expect(buffer.hexDump == hex(vector.bytes).hexDump)
    }

    @Test func unsupportedProtocolLevelStillDecodes() throws {
        var buffer = hex("10 0C 00 04 'MQTT' 07 02 00 3C 00 00")
        let packet = try MQTTPacket.read(from: &buffer, version: .v3_1_1)
        guard case .connect(let connect) = packet else {
            Issue.record("expected CONNECT, got \(String(describing: packet))")
            return
        }
        #expect(connect.protocolVersion.rawValue == 7)
        #expect(!connect.protocolVersion.isSupported)
    }

    @Test func incompletePacketLeavesBufferUntouched() throws {
        let full = hex("32 09 00 03 'a/b' 00 0A 'hi'")
        for length in 0..<full.readableBytes {
            var partial = full.getSlice(at: 0, length: length)!
            #expect(try MQTTPacket.read(from: &partial, version: .v3_1_1) == nil)
            #expect(partial.readableBytes == length)
        }
    }
}
