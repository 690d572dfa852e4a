import MQTTCodec
import NIOCore
import Testing

/// decode(encode(p)) == p for many generated packets, both protocol versions.
struct RoundTripPropertyTests {
    /// A small deterministic generator (SplitMix64) so failures reproduce.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let alphabet = Array("abcXYZ019/_-é€😀")

    static func text(_ g: inout Generator, max: Int = 12, allowEmpty: Bool = true) -> String {
        let count = Int.random(in: (allowEmpty ? 0 : 1)...max, using: &g)
        return String((0..<count).map { _ in alphabet.randomElement(using: &g)! })
    }

    static func bytes(_ g: inout Generator, max: Int = 300) -> [UInt8] {
        (0..<Int.random(in: 0...max, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    static func properties(_ g: inout Generator, _ version: MQTTProtocolVersion) -> MQTTProperties {
        guard version.hasProperties else { return [] }
        var properties: MQTTProperties = []
        for _ in 0..<Int.random(in: 0...3, using: &g) {
            switch Int.random(in: 0...4, using: &g) {
            case 0: properties.append(.userProperty, .stringPair(text(&g), text(&g)))
            case 1: properties.append(.messageExpiryInterval, .fourByteInteger(UInt32.random(in: 0...UInt32.max, using: &g)))
            case 2: properties.append(.correlationData, .binary(bytes(&g, max: 20)))
            case 3: properties.append(.subscriptionIdentifier, .variableInteger(UInt32.random(in: 1...268_435_455, using: &g)))
            default: properties.append(.contentType, .string(text(&g)))
            }
        }
        return properties
    }

    static func topic(_ g: inout Generator) -> String { text(&g, allowEmpty: false) }

    static func packet(_ g: inout Generator, _ version: MQTTProtocolVersion) -> MQTTPacket {
        let id = UInt16.random(in: 1...UInt16.max, using: &g)
        let code = MQTTReasonCode(version.hasProperties ? [0x00, 0x10, 0x80, 0x87][Int.random(in: 0...3, using: &g)] : 0)
        switch Int.random(in: 0...11, using: &g) {
        case 0:
            let hasUser = Bool.random(using: &g)
            return .connect(
                MQTTConnectPacket(
                    protocolVersion: version, clientIdentifier: text(&g), cleanStart: Bool.random(using: &g),
                    keepAlive: UInt16.random(in: 0...UInt16.max, using: &g),
                    username: hasUser ? text(&g) : nil,
                    password: hasUser && Bool.random(using: &g) ? bytes(&g, max: 40) : nil,
                    will: Bool.random(using: &g)
                        ? .init(
                            topic: topic(&g), payload: ByteBuffer(bytes: bytes(&g, max: 50)), qos: .atLeastOnce,
                            retain: Bool.random(using: &g), properties: properties(&g, version))
                        : nil,
                    properties: properties(&g, version)
                )
            )
        case 1:
            return .connAck(
                MQTTConnAckPacket(sessionPresent: Bool.random(using: &g), reasonCode: code, properties: properties(&g, version)))
        case 2:
            let qos = MQTTQoS(rawValue: UInt8.random(in: 0...2, using: &g))!
            return .publish(
                MQTTPublishPacket(
                    topicName: topic(&g), payload: ByteBuffer(bytes: bytes(&g)), qos: qos,
                    packetIdentifier: qos == .atMostOnce ? nil : id, dup: qos != .atMostOnce && Bool.random(using: &g),
                    retain: Bool.random(using: &g), properties: properties(&g, version)
                )
            )
        case 3: return .pubAck(MQTTAckPacket(packetIdentifier: id, reasonCode: code, properties: properties(&g, version)))
        case 4: return .pubRec(MQTTAckPacket(packetIdentifier: id, reasonCode: code))
        case 5: return .pubRel(MQTTAckPacket(packetIdentifier: id))
        case 6: return .pubComp(MQTTAckPacket(packetIdentifier: id, properties: properties(&g, version)))
        case 7:
            let subscriptions = (0..<Int.random(in: 1...4, using: &g)).map { _ in
                MQTTSubscribePacket.Subscription(
                    topicFilter: topic(&g),
                    options: .init(
                        qos: MQTTQoS(rawValue: UInt8.random(in: 0...2, using: &g))!,
                        noLocal: version.hasProperties && Bool.random(using: &g),
                        retainAsPublished: version.hasProperties && Bool.random(using: &g),
                        retainHandling: version.hasProperties ? .doNotSend : .sendOnSubscribe
                    )
                )
            }
            return .subscribe(MQTTSubscribePacket(packetIdentifier: id, subscriptions: subscriptions, properties: properties(&g, version)))
        case 8:
            return .subAck(
                MQTTSubAckPacket(
                    packetIdentifier: id, reasonCodes: [.grantedQoS1, .success, .v3SubscribeFailure], properties: properties(&g, version)))
        case 9:
            return .unsubscribe(
                MQTTUnsubscribePacket(packetIdentifier: id, topicFilters: [topic(&g), topic(&g)], properties: properties(&g, version)))
        case 10:
            return .unsubAck(
                MQTTSubAckPacket(packetIdentifier: id, reasonCodes: version.hasProperties ? [.success, .noSubscriptionExisted] : []))
        default:
            return .disconnect(MQTTDisconnectPacket(reasonCode: code, properties: properties(&g, version)))
        }
    }

    @Test(arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func decodeOfEncodeIsIdentity(version: MQTTProtocolVersion) throws {
        var g = Generator(state: UInt64(version.rawValue))
        for _ in 0..<2_000 {
            let packet = Self.packet(&g, version)
            var buffer = ByteBuffer()
            try packet.write(to: &buffer, version: version)
            let decoded = try MQTTPacket.read(from: &buffer, version: version)
            #expect(decoded == packet)
            #expect(buffer.readableBytes == 0)
        }
    }
}
