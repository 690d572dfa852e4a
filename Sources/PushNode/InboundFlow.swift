import MQTTCodec

/// The terminal-to-node half of a session's MQTT flows: topic aliases, the acknowledgements
/// of QoS 1 and 2 publishes (in the order the publishes came, whatever order routing finishes
/// in), QoS 2 exchanges awaiting PUBREL, and the receive maximum. Pure: the connection
/// handler feeds it packets and routing outcomes and writes what it answers.
struct InboundFlow {
    /// QoS 1/2 publishes the terminal may have unacknowledged (MQTT 5 receive maximum; the
    /// same bound for 3.1.1 on QoS 2 exchanges never released).
    let receiveMaximum: Int
    /// Topic aliases the terminal may use (MQTT 5).
    let topicAliasMaximum: Int
    /// MQTT 5 (properties, reason codes) rather than 3.1.1.
    let hasProperties: Bool

    private(set) var aliases: [UInt16: String] = [:]
    /// QoS 2 packet ids acknowledged with PUBREC and awaiting PUBREL.
    private(set) var awaitingRelease: Set<UInt16> = []
    /// Publishes waiting for their acknowledgement, in arrival order.
    private var pending: [Pending] = []

    private struct Pending {
        var packetID: UInt16
        var qos: MQTTQoS
        var reasonCode: MQTTReasonCode?
        var reasonString: String?
    }

    init(receiveMaximum: Int, topicAliasMaximum: Int, hasProperties: Bool) {
        self.receiveMaximum = receiveMaximum
        self.topicAliasMaximum = topicAliasMaximum
        self.hasProperties = hasProperties
    }

    /// What to do with a PUBLISH.
    enum Decision: Equatable {
        /// Route it to `topic` (its alias resolved). A QoS 1/2 publish's acknowledgement now
        /// waits in line until ``settle(_:code:reason:)`` gives its outcome.
        case route(topic: String)
        /// A QoS 2 publish sent again before PUBREL: PUBREC again, do not route it twice.
        case acknowledgeAgain(MQTTPacket)
        /// A protocol error: DISCONNECT with the code (MQTT 5), close.
        case disconnect(MQTTReasonCode, String)
        /// MQTT 3.1.1 QoS 2 publishes past the receive maximum without PUBREL: close.
        case close(String)
    }

    /// Takes a PUBLISH from the terminal.
    mutating func received(_ publish: MQTTPublishPacket) -> Decision {
        var topic = publish.topicName
        if hasProperties, let alias = publish.properties.integer(.topicAlias) {
            guard alias > 0, alias <= topicAliasMaximum else { return .disconnect(.topicAliasInvalid, "topic alias \(alias)") }
            if topic.isEmpty {
                guard let known = aliases[UInt16(alias)] else { return .disconnect(.protocolError, "unknown topic alias \(alias)") }
                topic = known
            } else {
                aliases[UInt16(alias)] = topic
            }
        }
        guard let packetID = publish.packetIdentifier else { return .route(topic: topic) }
        if publish.qos == .exactlyOnce, awaitingRelease.contains(packetID) {
            return .acknowledgeAgain(.pubRec(MQTTAckPacket(packetIdentifier: packetID)))
        }
        if pending.count + awaitingRelease.count >= receiveMaximum {
            guard !hasProperties else { return .disconnect(.receiveMaximumExceeded, "receive maximum exceeded") }
            // MQTT 3.1.1 has no receive maximum to announce; QoS 2 exchanges the client never
            // releases are bounded all the same.
            let unreleased = awaitingRelease.count + pending.lazy.filter { $0.qos == .exactlyOnce }.count
            if publish.qos == .exactlyOnce, unreleased >= receiveMaximum { return .close("too many QoS 2 publishes without PUBREL") }
        }
        pending.append(Pending(packetID: packetID, qos: publish.qos))
        return .route(topic: topic)
    }

    /// The outcome of the QoS 1/2 publish `packetID` (routed, or refused): its acknowledgement
    /// carries `code` (and `reason`) when its turn comes.
    mutating func settle(_ packetID: UInt16, code: MQTTReasonCode, reason: String? = nil) {
        guard let index = pending.firstIndex(where: { $0.packetID == packetID && $0.reasonCode == nil }) else { return }
        pending[index].reasonCode = code
        pending[index].reasonString = reason
    }

    /// The acknowledgements that may go now (those at the head of the line with an outcome),
    /// in order, and the packet ids that now await PUBREL (a PUBREC that accepts; a refusing
    /// one ends the exchange).
    mutating func readyAcknowledgements() -> (packets: [MQTTPacket], awaitingRelease: [UInt16]) {
        var packets: [MQTTPacket] = []
        var awaiting: [UInt16] = []
        while let first = pending.first, let code = first.reasonCode {
            pending.removeFirst()
            var ack = MQTTAckPacket(packetIdentifier: first.packetID, reasonCode: code)
            if let reason = first.reasonString { ack.properties.append(.reasonString, .string(reason)) }
            guard first.qos == .exactlyOnce else {
                packets.append(.pubAck(ack))
                continue
            }
            if code.rawValue < 0x80 {
                awaitingRelease.insert(first.packetID)
                awaiting.append(first.packetID)
            }
            packets.append(.pubRec(ack))
        }
        return (packets, awaiting)
    }

    /// PUBREL for `packetID`: the PUBCOMP to answer, and whether the exchange was known (MQTT 5
    /// answers an unknown one with 0x92; 3.1.1 has no code for it).
    mutating func released(_ packetID: UInt16) -> (pubComp: MQTTPacket, known: Bool) {
        let known = awaitingRelease.remove(packetID) != nil
        let code: MQTTReasonCode = known || !hasProperties ? .success : .packetIdentifierNotFound
        return (.pubComp(MQTTAckPacket(packetIdentifier: packetID, reasonCode: code)), known)
    }

    /// Exchanges a resumed session left awaiting PUBREL.
    mutating func resume(awaitingRelease released: [UInt16]) {
        awaitingRelease = Set(released)
    }
}
