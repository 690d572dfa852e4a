import FleetCore
import MQTTCodec
import Testing

@testable import PushNode

/// Messages towards a terminal, without a socket or Redis: packet ids, acknowledgements of
/// both QoS levels, redelivery under the same id, topic aliases one past their maximum.
struct OutboundWindowTests {
    static func message(_ id: String) -> StoredMessage { StoredMessage(id: id, qos: 2, expiresAt: 0, topic: "t", payload: []) }

    @Test func packetIDsAreFreeOnesAndARedeliveryKeepsItsOwn() {
        var window = OutboundWindow()
        let first = window.send(Self.message("a"), entry: nil, tracked: false, qos: .atLeastOnce)
        let second = window.send(Self.message("b"), entry: nil, tracked: false, qos: .atLeastOnce)
        #expect(first == 1 && second == 2)
        // A redelivery keeps its packet id when free; a taken one gets the next free id.
        #expect(window.send(Self.message("c"), entry: nil, tracked: false, qos: .atLeastOnce, preferring: 40) == 40)
        #expect(window.send(Self.message("d"), entry: nil, tracked: false, qos: .atLeastOnce, preferring: 1) == 3)
        #expect(window.count == 4 && window.contains(messageID: "c"))
        #expect(window.pubAck(1)?.messageID == "a")
        #expect(window.pubAck(1) == nil)  // a late duplicate
        #expect(!window.contains(messageID: "a"))
    }

    @Test func packetIDsWrapAroundPastTheLastAndSkipTakenOnes() {
        var window = OutboundWindow()
        _ = window.send(Self.message("x"), entry: nil, tracked: false, qos: .atLeastOnce, preferring: 1)
        for index in 0..<65_533 { _ = window.send(Self.message("m\(index)"), entry: nil, tracked: false, qos: .atLeastOnce) }
        // 1...65534 taken; the next is 65535, then the search wraps past 1 to a freed id.
        #expect(window.send(Self.message("last"), entry: nil, tracked: false, qos: .atLeastOnce) == 65_535)
        #expect(window.pubAck(7) != nil)
        #expect(window.send(Self.message("again"), entry: nil, tracked: false, qos: .atLeastOnce) == 7)
    }

    @Test func qos2GoesThroughPubrecAndPubcompAndARefusalEndsIt() {
        var window = OutboundWindow()
        let id = window.send(Self.message("q"), entry: "e", tracked: true, qos: .exactlyOnce)
        #expect(window.pubAck(id) == nil)  // a PUBACK does not end a QoS 2 exchange
        #expect(window.pubComp(id) == nil)  // nor a PUBCOMP before PUBREC
        guard case .release(let pending) = window.pubRec(MQTTAckPacket(packetIdentifier: id)) else {
            Issue.record("PUBREC not taken")
            return
        }
        #expect(pending.released && pending.entry == "e")
        guard case .unexpected = window.pubRec(MQTTAckPacket(packetIdentifier: id)) else {
            Issue.record("a second PUBREC was taken")
            return
        }
        #expect(window.count == 1)  // the id stays taken until PUBCOMP
        #expect(window.pubComp(id)?.messageID == "q")
        #expect(window.isEmpty)
        let refused = window.send(Self.message("r"), entry: nil, tracked: false, qos: .exactlyOnce)
        guard case .refused = window.pubRec(MQTTAckPacket(packetIdentifier: refused, reasonCode: .quotaExceeded)) else {
            Issue.record("a refusing PUBREC kept the exchange")
            return
        }
        #expect(window.isEmpty)
        // A resumed session's exchange at PUBREL.
        window.resumeRelease(9, placeholder: Self.message("pubrel:9"))
        #expect(window.pubComp(9) != nil)
    }

    @Test func topicAliasesUpToTheMaximum() {
        var window = OutboundWindow()
        #expect(window.alias(for: "a") == nil)  // the client takes none
        window.aliasMaximum = 2
        #expect(window.alias(for: "a")! == (1, true))
        #expect(window.alias(for: "a")! == (1, false))
        #expect(window.alias(for: "b")! == (2, true))
        #expect(window.alias(for: "c") == nil)  // one past the maximum: the topic goes in full
        #expect(window.alias(for: "b")! == (2, false))
    }
}
