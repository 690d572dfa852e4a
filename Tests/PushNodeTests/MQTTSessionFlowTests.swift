import FleetCore
import MQTTCodec
import NIOCore
import Testing

@testable import PushNode

/// The session's message flows both ways, with a scripted terminal: QoS 0/1/2, DUP,
/// receive maximum, topic aliases, subscriptions and retained messages, backlog order.
struct MQTTSessionFlowTests {
    static func publish(
        _ topic: String, qos: MQTTQoS, id: UInt16? = nil, alias: UInt16? = nil, payload: String = "x"
    ) -> MQTTPacket {
        var properties: MQTTProperties = []
        if let alias { properties.append(.topicAlias, .twoByteInteger(alias)) }
        return .publish(
            MQTTPublishPacket(
                topicName: topic, payload: ByteBuffer(string: payload), qos: qos, packetIdentifier: id, properties: properties))
    }

    static func subscribe(
        _ filters: [(String, MQTTQoS)], id: UInt16 = 1, identifier: UInt32? = nil,
        retainHandling: MQTTSubscribePacket.Options.RetainHandling = .sendOnSubscribe
    ) -> MQTTPacket {
        var properties: MQTTProperties = []
        if let identifier { properties.append(.subscriptionIdentifier, .variableInteger(identifier)) }
        return .subscribe(
            MQTTSubscribePacket(
                packetIdentifier: id,
                subscriptions: filters.map {
                    .init(topicFilter: $0.0, options: .init(qos: $0.1, retainHandling: retainHandling))
                }, properties: properties))
    }

    static func routes(_ actions: [MQTTSessionAction]) -> [(StoredMessage, UInt16?)] {
        actions.compactMap { if case .route(let message, let id) = $0 { (message, id) } else { nil } }
    }

    // MARK: Terminal to node

    @Test func terminalPublishesAreAcknowledgedOnceTheFleetTookThemInOrder() {
        var terminal = ScriptedTerminal()
        _ = terminal.connect()
        // QoS 0: routed, nothing to acknowledge.
        var actions = terminal.send(Self.publish("a/b", qos: .atMostOnce))
        #expect(Self.routes(actions).map(\.1) == [nil])
        #expect(terminal.feed { $0.routed(packetID: nil, .accepted) }.written.isEmpty)
        // QoS 1, two in a row: the second finishes first, the PUBACKs still go in order.
        _ = terminal.send(Self.publish("a/b", qos: .atLeastOnce, id: 1))
        _ = terminal.send(Self.publish("a/b", qos: .atLeastOnce, id: 2))
        #expect(terminal.feed { $0.routed(packetID: 2, .accepted) }.written.isEmpty)
        actions = terminal.feed { $0.routed(packetID: 1, .accepted) }
        #expect(actions.written == [.pubAck(MQTTAckPacket(packetIdentifier: 1)), .pubAck(MQTTAckPacket(packetIdentifier: 2))])
        // QoS 2: PUBREC once routed, a resent PUBLISH is not routed twice, PUBREL -> PUBCOMP.
        actions = terminal.send(Self.publish("a/b", qos: .exactlyOnce, id: 3))
        #expect(Self.routes(actions).count == 1)
        #expect(terminal.feed { $0.routed(packetID: 3, .accepted) }.written == [.pubRec(MQTTAckPacket(packetIdentifier: 3))])
        actions = terminal.send(Self.publish("a/b", qos: .exactlyOnce, id: 3))
        #expect(Self.routes(actions).isEmpty)
        #expect(actions.written == [.pubRec(MQTTAckPacket(packetIdentifier: 3))])
        #expect(terminal.send(.pubRel(MQTTAckPacket(packetIdentifier: 3))).written == [.pubComp(MQTTAckPacket(packetIdentifier: 3))])
        // The fleet refused: MQTT 5 says why.
        _ = terminal.send(Self.publish("a/b", qos: .atLeastOnce, id: 4))
        actions = terminal.feed { $0.routed(packetID: 4, .retainedStoreFull("full")) }
        guard case .pubAck(let refused) = actions.written.first else { Issue.record("no PUBACK: \(actions)"); return }
        #expect(refused.reasonCode == .quotaExceeded)
    }

    @Test func receiveMaximumTowardsTheNodePausesReadingAndRefusesBeyondIt() {
        var terminal = ScriptedTerminal { $0.receiveMaximum = 4 }
        _ = terminal.connect()
        var paused = false
        for id in 1...4 {
            let actions = terminal.send(Self.publish("a", qos: .atLeastOnce, id: UInt16(id)))
            paused = paused || actions.contains { if case .setReading(false) = $0 { true } else { false } }
        }
        #expect(paused)
        // One past the receive maximum: DISCONNECT 0x93.
        let over = terminal.send(Self.publish("a", qos: .atLeastOnce, id: 5))
        #expect(over.disconnect?.reasonCode == .receiveMaximumExceeded)
        // Half of them done: reading resumes.
        _ = terminal.feed { $0.routed(packetID: 1, .accepted) }
        let resumed = terminal.feed { $0.routed(packetID: 2, .accepted) }
        #expect(resumed.contains { if case .setReading(true) = $0 { true } else { false } })
    }

    @Test func inboundTopicAliasesResolveAndUnknownOnesAreAProtocolError() {
        var terminal = ScriptedTerminal()
        _ = terminal.connect()
        _ = terminal.send(Self.publish("sensors/1", qos: .atMostOnce, alias: 3))
        let actions = terminal.send(Self.publish("", qos: .atMostOnce, alias: 3))
        #expect(Self.routes(actions).map(\.0.topic) == ["sensors/1"])
        #expect(terminal.send(Self.publish("", qos: .atMostOnce, alias: 4)).disconnect?.reasonCode == .protocolError)
        var beyond = ScriptedTerminal()
        _ = beyond.connect()
        #expect(beyond.send(Self.publish("a", qos: .atMostOnce, alias: 33)).disconnect?.reasonCode == .topicAliasInvalid)
    }

    // MARK: Node to terminal

    @Test func storedPushesGoOutAtTheirQoSAndLeaveWhenAcknowledged() {
        var terminal = ScriptedTerminal()
        let entries = [
            ScriptedTerminal.entry("q0", qos: 0), ScriptedTerminal.entry("q1", qos: 1), ScriptedTerminal.entry("q2", qos: 2),
        ]
        // The terminal subscribed to its push topic at QoS 2 (the automatic one is QoS 1).
        var actions = terminal.connect(registration: SessionRegistration(subscriptions: ["push/t1": "2"], queue: entries))
        #expect(actions.publishedIDs == ["q0", "q1", "q2"])
        #expect(actions.publishes.map(\.qos) == [.atMostOnce, .atLeastOnce, .exactlyOnce])
        // QoS 0 leaves the list as it is written; QoS 1/2 are recorded as sent.
        #expect(actions.storeWrites.contains(.removeEntry(entries[0])))
        #expect(actions.storeWrites.contains(.recordSent(messageID: "q1", packetID: 1)))
        #expect(actions.recordedStates == ["q0": .delivered, "q1": .delivered, "q2": .delivered])
        // PUBACK: the entry leaves, the status says acknowledged.
        actions = terminal.send(.pubAck(MQTTAckPacket(packetIdentifier: 1)))
        #expect(actions.storeWrites == [.removeEntry(entries[1]), .forgetSent(messageID: "q1")])
        #expect(actions.recordedStates == ["q1": .acknowledged])
        // A late duplicate PUBACK is ignored.
        #expect(terminal.send(.pubAck(MQTTAckPacket(packetIdentifier: 1))).isEmpty)
        // QoS 2: PUBREC -> PUBREL; PUBCOMP ends it.
        actions = terminal.send(.pubRec(MQTTAckPacket(packetIdentifier: 2)))
        #expect(actions.written == [.pubRel(MQTTAckPacket(packetIdentifier: 2))])
        actions = terminal.send(.pubComp(MQTTAckPacket(packetIdentifier: 2)))
        #expect(actions.recordedStates == ["q2": .acknowledged])
        #expect(actions.storeWrites.contains(.removeEntry(entries[2])))
        // PUBCOMP for nothing: a protocol error.
        #expect(terminal.send(.pubComp(MQTTAckPacket(packetIdentifier: 2))).disconnect?.reasonCode == .protocolError)
    }

    @Test func aBacklogLongerThanTheClientsReceiveMaximumDrainsAWindowAtATime() {
        var terminal = ScriptedTerminal()
        let entries = (1...5).map { ScriptedTerminal.entry("m\($0)") }
        var properties: MQTTProperties = []
        properties.append(.receiveMaximum, .twoByteInteger(2))
        // The register script read as many as the window (2): two go out, no more.
        var actions = terminal.connect(properties: properties, registration: SessionRegistration(queue: Array(entries[0..<2])))
        #expect(actions.publishedIDs == ["m1", "m2"])
        #expect(actions.reads.isEmpty)
        // An acknowledgement frees room: the next entries are read after the two still in flight.
        actions = terminal.send(.pubAck(MQTTAckPacket(packetIdentifier: 1)))
        guard let read = actions.reads.first else { Issue.record("no read: \(actions)"); return }
        // The list holds m2..m5 once m1's LREM is done; m2 is the anchor.
        #expect(read.anchor == "m2")
        actions = terminal.feed { $0.storedRead(read, .success(StoredListRead(entries: Array(entries[1..<3]), sent: nil))) }
        #expect(actions.publishedIDs == ["m3"])
        #expect(terminal.session.outbound.count == 2)
    }

    @Test func outboundTopicAliasesAreUsedUpToTheClientsMaximum() {
        var terminal = ScriptedTerminal()
        var properties: MQTTProperties = []
        properties.append(.topicAliasMaximum, .twoByteInteger(1))
        _ = terminal.connect(properties: properties)
        var actions = terminal.feed { $0.deliverLive(ScriptedTerminal.message("a", qos: 0, topic: ""), tracked: false) }
        actions += terminal.feed { $0.deliverLive(ScriptedTerminal.message("b", qos: 0, topic: ""), tracked: false) }
        actions += terminal.feed { $0.deliverLive(ScriptedTerminal.message("c", qos: 0, topic: "broadcast"), tracked: false) }
        let publishes = actions.publishes
        #expect(publishes.map(\.topicName) == ["push/t1", "", "broadcast"])
        #expect(publishes.map { $0.properties.integer(.topicAlias) } == [1, 1, nil])
    }

    @Test func overlappingSubscriptionsDeliverOnceAtTheHighestQoSWithEveryIdentifier() {
        var terminal = ScriptedTerminal()
        _ = terminal.connect()
        for (filter, qos, identifier) in [("a/+", MQTTQoS.atLeastOnce, UInt32(1)), ("a/#", .exactlyOnce, 2)] {
            let actions = terminal.send(Self.subscribe([(filter, qos)], identifier: identifier))
            guard case .recordSubscriptions(_, let reply) = actions.last else { Issue.record("not recorded: \(actions)"); return }
            _ = terminal.feed { $0.subscriptionsRecorded(reply) }
        }
        var message = ScriptedTerminal.message("p", qos: 2, topic: "a/b")
        message.origin = "other"
        let actions = terminal.feed { $0.deliverPublished(message, shared: nil) }
        #expect(actions.publishes.count == 1)
        #expect(actions.publishes.first?.qos == .exactlyOnce)
        let identifiers = actions.publishes.first?.properties.properties.compactMap { property -> UInt32? in
            guard property.identifier == MQTTPropertyIdentifier.subscriptionIdentifier, case .variableInteger(let id) = property.value
            else { return nil }
            return id
        }
        #expect(identifiers?.sorted() == [1, 2])
    }

    @Test func retainedMessagesFollowTheSubAckOfANewSubscriptionOnly() {
        var terminal = ScriptedTerminal()
        _ = terminal.connect()
        var actions = terminal.send(Self.subscribe([("news/#", MQTTQoS.atLeastOnce)]))
        #expect(actions.written.isEmpty)  // SUBACK waits until the index has the filter
        guard case .recordSubscriptions(let writes, let reply) = actions.last else { Issue.record("not recorded: \(actions)"); return }
        #expect(writes.contains(.nodeIndex(adding: true, filters: ["news/#"])))
        actions = terminal.feed { $0.subscriptionsRecorded(reply) }
        #expect(actions.written.map(\.typeCode) == [MQTTPacket.subAck(MQTTSubAckPacket(packetIdentifier: 1, reasonCodes: [])).typeCode])
        guard case .readRetained(let requests) = actions.last else { Issue.record("no retained read: \(actions)"); return }
        var retained = ScriptedTerminal.message("r", qos: 1, topic: "news/today")
        retained.retain = true
        var elsewhere = ScriptedTerminal.message("s", qos: 1, topic: "weather")
        elsewhere.retain = true
        actions = terminal.feed { $0.retainedRead([retained, elsewhere], for: requests) }
        #expect(actions.publishedIDs == ["r"])
        #expect(actions.publishes.first?.retain == true)
        // Retain handling 2: no retained messages.
        actions = terminal.send(Self.subscribe([("other/#", MQTTQoS.atLeastOnce)], id: 2, retainHandling: .doNotSend))
        guard case .recordSubscriptions(_, let quiet) = actions.last else { Issue.record("not recorded: \(actions)"); return }
        #expect(quiet.retained.isEmpty)
    }

    @Test func liveMessagesThatComeDuringRegistrationFollowTheStoredBacklog() {
        var terminal = ScriptedTerminal()
        _ = terminal.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        _ = terminal.feed { $0.admitted() }
        #expect(terminal.feed { $0.deliverLive(ScriptedTerminal.message("live"), tracked: true) }.isEmpty)
        let actions = terminal.registered(
            SessionRegistration(queue: [ScriptedTerminal.entry("s1"), ScriptedTerminal.entry("s2")]))
        #expect(actions.publishedIDs == ["s1", "s2", "live"])
        #expect(actions.connAck != nil)
        // Bounded: past four windows of early messages they are dropped (and recorded so).
        var flooded = ScriptedTerminal { $0.inflightWindow = 2 }
        _ = flooded.send(.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t1")))
        _ = flooded.feed { $0.admitted() }
        for index in 0..<8 { #expect(flooded.feed { $0.deliverLive(ScriptedTerminal.message("m\(index)"), tracked: true) }.isEmpty) }
        #expect(flooded.feed { $0.deliverLive(ScriptedTerminal.message("over"), tracked: true) }.recordedStates == ["over": .dropped])
    }

    @Test func aNotWritableTerminalGetsNoLivePushesAndItsBacklogWaits() {
        var terminal = ScriptedTerminal()
        _ = terminal.connect()
        _ = terminal.feed { $0.writabilityChanged(false) }
        #expect(terminal.feed { $0.deliverLive(ScriptedTerminal.message("x"), tracked: true) }.recordedStates == ["x": .dropped])
        #expect(terminal.feed { $0.wake() }.reads.isEmpty)
        #expect(terminal.feed { $0.writabilityChanged(true) }.reads.count == 1)
    }
}
