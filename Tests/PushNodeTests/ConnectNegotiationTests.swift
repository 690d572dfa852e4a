import FleetCore
import MQTTCodec
import NIOCore
import Testing

@testable import PushNode

/// CONNECT negotiation without a socket or Redis: every refusal, and the terms granted.
struct ConnectNegotiationTests {
    static let secret = "negotiation-tests-secret-32-byte"
    static let now: Int64 = 1_800_000_000
    let credentials = CredentialAuthority(secret: Self.secret)

    func configuration(anonymous: Bool = false, maximumKeepAlive: Int = 0) -> PushNodeConfiguration {
        var configuration = PushNodeConfiguration(
            redis: .init(host: "127.0.0.1"), mqttHost: "127.0.0.1", mqttPort: 0, nodeID: "n1", secret: Self.secret)
        configuration.allowAnonymous = anonymous
        configuration.maximumKeepAlive = maximumKeepAlive
        configuration.maximumSessionExpiry = 3600
        return configuration
    }

    func password(_ terminal: String, ttl: Int64 = 60) -> [UInt8] {
        Array(credentials.issue(terminal: terminal, ttl: ttl, nowMillis: Self.now * 1000).password.utf8)
    }

    func negotiate(_ connect: MQTTConnectPacket, anonymous: Bool = false, maximumKeepAlive: Int = 0) -> Result<
        ConnectNegotiation.Terms, ConnectNegotiation.Refusal
    > {
        ConnectNegotiation.negotiate(
            connect, configuration: configuration(anonymous: anonymous, maximumKeepAlive: maximumKeepAlive), credentials: credentials,
            now: Self.now, newID: { "fixed" })
    }

    func refusal(_ connect: MQTTConnectPacket, anonymous: Bool = false) -> (MQTTReasonCode, MQTTReasonCode)? {
        guard case .failure(let refusal) = negotiate(connect, anonymous: anonymous) else { return nil }
        return (refusal.v3, refusal.v5)
    }

    @Test func eachRefusalHasItsCodes() {
        let v5 = MQTTProtocolVersion.v5
        func with(_ property: MQTTPropertyIdentifier, _ value: MQTTProperty.Value) -> MQTTProperties {
            var properties: MQTTProperties = []
            properties.append(property, value)
            return properties
        }
        // Unknown protocol level: answered in the 3.1.1 format.
        guard
            case .failure(let unknown) = negotiate(
                MQTTConnectPacket(protocolVersion: MQTTProtocolVersion(rawValue: 6), clientIdentifier: "t"))
        else {
            Issue.record("accepted")
            return
        }
        #expect(unknown.version == .v3_1_1 && unknown.v3 == .v3UnacceptableProtocolVersion)
        let cases: [(MQTTConnectPacket, Bool, MQTTReasonCode, MQTTReasonCode)] = [
            (
                MQTTConnectPacket(
                    protocolVersion: v5, clientIdentifier: "t", password: password("t"),
                    properties: with(.authenticationMethod, .string("SCRAM"))), false, .v3NotAuthorized, .badAuthenticationMethod
            ),
            (
                MQTTConnectPacket(
                    protocolVersion: v5, clientIdentifier: "t", password: password("t"),
                    properties: with(.receiveMaximum, .twoByteInteger(0))),
                false, .v3ServerUnavailable, .protocolError
            ),
            (
                MQTTConnectPacket(
                    protocolVersion: v5, clientIdentifier: "t", password: password("t"),
                    properties: with(.maximumPacketSize, .fourByteInteger(0))), false, .v3ServerUnavailable, .protocolError
            ),
            // An empty client id: only anonymous, and on 3.1.1 only with a clean session.
            (MQTTConnectPacket(clientIdentifier: ""), false, .v3IdentifierRejected, .clientIdentifierNotValid),
            (MQTTConnectPacket(clientIdentifier: "", cleanStart: false), true, .v3IdentifierRejected, .clientIdentifierNotValid),
            // Not key-safe: refused with credentials, too long even for anonymous mode.
            (
                MQTTConnectPacket(clientIdentifier: "a b", password: password("a b")), false, .v3IdentifierRejected,
                .clientIdentifierNotValid
            ),
            (
                MQTTConnectPacket(clientIdentifier: String(repeating: "é", count: 129)), true, .v3IdentifierRejected,
                .clientIdentifierNotValid
            ),
            // Credentials: another user name, a credential of another terminal, an expired one, none.
            (MQTTConnectPacket(clientIdentifier: "t", username: "u", password: password("t")), false, .v3NotAuthorized, .notAuthorized),
            (MQTTConnectPacket(clientIdentifier: "t", password: password("other")), false, .v3NotAuthorized, .notAuthorized),
            (MQTTConnectPacket(clientIdentifier: "t", password: password("t", ttl: -1)), false, .v3NotAuthorized, .notAuthorized),
            (MQTTConnectPacket(clientIdentifier: "t"), false, .v3BadUserNameOrPassword, .badUserNameOrPassword),
            // User properties one past the bound (8,192 bytes of names and values), in the will.
            (
                MQTTConnectPacket(
                    protocolVersion: v5, clientIdentifier: "t", password: password("t"),
                    will: .init(
                        topic: "w", payload: ByteBuffer(),
                        properties: with(.userProperty, .stringPair("k", String(repeating: "v", count: 8192))))),
                false, .v3NotAuthorized, .packetTooLarge
            ),
            // Wills: a wildcard topic, too many levels, a retained payload over the size.
            (
                MQTTConnectPacket(clientIdentifier: "t", password: password("t"), will: .init(topic: "a/+", payload: ByteBuffer())),
                false, .v3NotAuthorized, .topicNameInvalid
            ),
            (
                MQTTConnectPacket(
                    clientIdentifier: "t", password: password("t"),
                    will: .init(topic: String(repeating: "a/", count: 128) + "a", payload: ByteBuffer())), false, .v3NotAuthorized,
                .topicNameInvalid
            ),
            (
                MQTTConnectPacket(
                    clientIdentifier: "t", password: password("t"),
                    will: .init(topic: "w", payload: ByteBuffer(repeating: 1, count: 65_537), retain: true)), false, .v3NotAuthorized,
                .quotaExceeded
            ),
        ]
        for (index, (connect, anonymous, v3, v5)) in cases.enumerated() {
            let codes = refusal(connect, anonymous: anonymous)
            #expect(codes?.0 == v3 && codes?.1 == v5, "case \(index): \(String(describing: codes))")
        }
    }

    @Test func termsGrantedToAccepted() throws {
        // MQTT 5: the expiry capped at the node's maximum, the client's limits taken.
        var properties: MQTTProperties = []
        properties.append(.sessionExpiryInterval, .fourByteInteger(999_999))
        properties.append(.receiveMaximum, .twoByteInteger(5))
        properties.append(.topicAliasMaximum, .twoByteInteger(3))
        let v5 = try negotiate(
            MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t", keepAlive: 0, password: password("t"), properties: properties),
            maximumKeepAlive: 120
        ).get()
        #expect(v5.terminal == "t" && v5.issuedAt == String(Self.now * 1000))
        #expect(v5.sessionExpiry == 3600 && v5.requestedSessionExpiry == 999_999)
        #expect(v5.clientReceiveMaximum == 5 && v5.clientTopicAliasMaximum == 3)
        #expect(v5.keepAliveSeconds == 120 && v5.serverKeepAlive == 120)  // none asked: the node's maximum
        // MQTT 3.1.1, clean session off: the node's maximum expiry; its keep alive stays.
        let v3 = try negotiate(
            MQTTConnectPacket(clientIdentifier: "t", cleanStart: false, keepAlive: 0, password: password("t")), maximumKeepAlive: 120
        )
        .get()
        #expect(v3.sessionExpiry == 3600 && v3.keepAliveSeconds == 0 && v3.serverKeepAlive == nil)
        // Anonymous: an empty id is assigned, one that is not key-safe escaped.
        let assigned = try negotiate(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: ""), anonymous: true).get()
        #expect(assigned.terminal == "auto-fixed" && assigned.assignedID == "auto-fixed")
        let escaped = try negotiate(MQTTConnectPacket(clientIdentifier: "a b"), anonymous: true).get()
        #expect(escaped.terminal == TerminalID.escaped("a b") && escaped.assignedID == nil)
        // A will within the rules, with its delay.
        var willProperties: MQTTProperties = []
        willProperties.append(.willDelayInterval, .fourByteInteger(30))
        let will = try negotiate(
            MQTTConnectPacket(
                protocolVersion: .v5, clientIdentifier: "t", password: password("t"),
                will: .init(topic: "w/t", payload: ByteBuffer(string: "bye"), qos: .atLeastOnce, properties: willProperties))
        ).get()
        #expect(will.will?.message.topic == "w/t" && will.will?.delay == 30 && will.will?.message.origin == "t")
    }
}
