import MQTTCodec
import NIOCore
import Testing

@testable import PushNode

/// Publishes from a terminal, without a socket or Redis: aliases, acknowledgement order,
/// QoS 2 exchanges, the receive maximum one past it, for both protocol versions.
struct InboundFlowTests {
    static func publish(_ topic: String, qos: MQTTQoS, id: UInt16? = nil, alias: UInt16? = nil) -> MQTTPublishPacket {
        var properties: MQTTProperties = []
        if let alias { properties.append(.topicAlias, .twoByteInteger(alias)) }
        return MQTTPublishPacket(topicName: topic, payload: ByteBuffer(string: "x"), qos: qos, packetIdentifier: id, properties: properties)
    }

    @Test func topicAliasesAreSetUsedAndBounded() {
        var flow = InboundFlow(receiveMaximum: 64, topicAliasMaximum: 2, hasProperties: true)
        #expect(flow.received(Self.publish("a/b", qos: .atMostOnce, alias: 1)) == .route(topic: "a/b"))
        #expect(flow.received(Self.publish("", qos: .atMostOnce, alias: 1)) == .route(topic: "a/b"))
        #expect(flow.received(Self.publish("c", qos: .atMostOnce, alias: 1)) == .route(topic: "c"))  // reassigned
        #expect(flow.received(Self.publish("", qos: .atMostOnce, alias: 1)) == .route(topic: "c"))
        guard case .disconnect(.protocolError, _) = flow.received(Self.publish("", qos: .atMostOnce, alias: 2)) else {
            Issue.record("an unknown alias is a protocol error")
            return
        }
        // One past the maximum, and 0.
        for alias: UInt16 in [3, 0] {
            guard case .disconnect(.topicAliasInvalid, _) = flow.received(Self.publish("d", qos: .atMostOnce, alias: alias)) else {
                Issue.record("alias \(alias) accepted")
                return
            }
        }
    }

    @Test func acknowledgementsGoInArrivalOrderWhateverOrderRoutingEnds() {
        var flow = InboundFlow(receiveMaximum: 64, topicAliasMaximum: 0, hasProperties: true)
        for id: UInt16 in 1...3 { #expect(flow.received(Self.publish("t", qos: .atLeastOnce, id: id)) == .route(topic: "t")) }
        flow.settle(3, code: .success)
        flow.settle(2, code: .notAuthorized, reason: "no")
        #expect(flow.readyAcknowledgements().packets.isEmpty)  // 1 is still being routed
        flow.settle(1, code: .success)
        let ready = flow.readyAcknowledgements().packets
        #expect(ready.count == 3)
        guard case .pubAck(let first) = ready[0], case .pubAck(let second) = ready[1], case .pubAck(let third) = ready[2] else {
            Issue.record("\(ready)")
            return
        }
        #expect([first.packetIdentifier, second.packetIdentifier, third.packetIdentifier] == [1, 2, 3])
        #expect(second.reasonCode == .notAuthorized && second.properties[.reasonString] == .string("no"))
    }

    @Test func qos2ExchangesAwaitReleaseOnceAndAResendIsNotRoutedTwice() {
        var flow = InboundFlow(receiveMaximum: 64, topicAliasMaximum: 0, hasProperties: true)
        #expect(flow.received(Self.publish("t", qos: .exactlyOnce, id: 7)) == .route(topic: "t"))
        #expect(flow.received(Self.publish("t", qos: .exactlyOnce, id: 8)) == .route(topic: "t"))
        flow.settle(7, code: .success)
        flow.settle(8, code: .quotaExceeded)
        let (packets, awaiting) = flow.readyAcknowledgements()
        #expect(packets.count == 2 && awaiting == [7])  // a refusing PUBREC ends its exchange
        #expect(
            flow.received(Self.publish("t", qos: .exactlyOnce, id: 7)) == .acknowledgeAgain(.pubRec(MQTTAckPacket(packetIdentifier: 7))))
        #expect(flow.released(7).known)
        #expect(flow.released(7) == (.pubComp(MQTTAckPacket(packetIdentifier: 7, reasonCode: .packetIdentifierNotFound)), false))
        var v3 = InboundFlow(receiveMaximum: 64, topicAliasMaximum: 0, hasProperties: false)
        #expect(v3.released(9) == (.pubComp(MQTTAckPacket(packetIdentifier: 9)), false))  // 3.1.1 has no code for it
        // A resumed session's exchanges.
        v3.resume(awaitingRelease: [4, 5])
        #expect(v3.awaitingRelease == [4, 5])
    }

    @Test func theReceiveMaximumOnePastIt() {
        // MQTT 5: the 4th unacknowledged publish with a maximum of 3 is a protocol error.
        var v5 = InboundFlow(receiveMaximum: 3, topicAliasMaximum: 0, hasProperties: true)
        for id: UInt16 in 1...3 { #expect(v5.received(Self.publish("t", qos: .atLeastOnce, id: id)) == .route(topic: "t")) }
        guard case .disconnect(.receiveMaximumExceeded, _) = v5.received(Self.publish("t", qos: .atLeastOnce, id: 4)) else {
            Issue.record("the 4th was taken")
            return
        }
        // Acknowledged ones free their place; QoS 0 never counts.
        for id: UInt16 in 1...3 { v5.settle(id, code: .success) }
        _ = v5.readyAcknowledgements()
        #expect(v5.received(Self.publish("t", qos: .atLeastOnce, id: 4)) == .route(topic: "t"))
        #expect(v5.received(Self.publish("t", qos: .atMostOnce)) == .route(topic: "t"))

        // MQTT 3.1.1: QoS 1 beyond it still goes (reading pauses instead); QoS 2 exchanges
        // never released end the connection one past the maximum.
        var v3 = InboundFlow(receiveMaximum: 3, topicAliasMaximum: 0, hasProperties: false)
        for id: UInt16 in 1...3 { #expect(v3.received(Self.publish("t", qos: .exactlyOnce, id: id)) == .route(topic: "t")) }
        #expect(v3.received(Self.publish("t", qos: .atLeastOnce, id: 10)) == .route(topic: "t"))
        guard case .close = v3.received(Self.publish("t", qos: .exactlyOnce, id: 4)) else {
            Issue.record("the 4th unreleased QoS 2 publish was taken")
            return
        }
    }
}
