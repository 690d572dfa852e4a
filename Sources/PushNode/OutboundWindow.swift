import FleetCore
import MQTTCodec
import Metrics

/// The node-to-terminal half of a session's MQTT flows: the packet ids of QoS 1/2 messages in
/// flight and what each awaits (PUBACK; PUBREC then PUBCOMP), and the topic aliases the node
/// uses towards the terminal. Pure: the connection handler asks it for packet ids and aliases
/// and tells it the acknowledgements that come.
struct OutboundWindow {
    /// A QoS 1 or 2 message written to the terminal and not yet acknowledged.
    /// What a message in flight needs once its acknowledgement comes (not the message: a
    /// `StoredMessage` is ~150 bytes and eight reference-counted fields, copied in and out).
    struct Inflight {
        var messageID: String
        /// The message's expiry (Unix milliseconds, 0: none).
        var expiresAt: Int64
        /// The stored JSON entry, or nil for messages that were never stored.
        var entry: String?
        /// Whether the message has a per-terminal status record.
        var tracked: Bool
        /// The QoS it was sent with (the message's, capped by the subscription).
        var qos: MQTTQoS
        /// QoS 2 only: PUBREC arrived and PUBREL was sent; waiting for PUBCOMP.
        var released = false
    }

    private(set) var inflight: [UInt16: Inflight] = [:]
    /// Ids of the messages in flight.
    private var messageIDs: Set<String> = []
    private var nextPacketID: UInt16 = 1
    private var aliases: [String: UInt16] = [:]
    /// Topic aliases the node may use towards the terminal (the smaller of the client's and
    /// the node's maximum; 0: none).
    var aliasMaximum = 0

    var count: Int { inflight.count }
    var isEmpty: Bool { inflight.isEmpty }

    /// Whether the message `id` is in flight.
    func contains(messageID id: String) -> Bool { messageIDs.contains(id) }

    /// The topic alias for `topic`: an existing one (the PUBLISH leaves the topic out), a new
    /// one (the PUBLISH carries both), or nil when all are taken.
    mutating func alias(for topic: String) -> (alias: UInt16, isNew: Bool)? {
        if let alias = aliases[topic] { return (alias, false) }
        guard aliases.count < aliasMaximum else { return nil }
        let alias = UInt16(aliases.count + 1)
        aliases[topic] = alias
        return (alias, true)
    }

    /// Puts `message` in flight and returns its packet id: `preferred` if given and free (a
    /// redelivery keeps its id), otherwise the next free one.
    mutating func send(_ message: StoredMessage, entry: String?, tracked: Bool, qos: MQTTQoS, preferring preferred: UInt16? = nil) -> UInt16
    {
        var id: UInt16
        if let preferred, preferred != 0, inflight[preferred] == nil {
            id = preferred
        } else {
            repeat {
                id = nextPacketID
                nextPacketID = nextPacketID == .max ? 1 : nextPacketID + 1
            } while inflight[id] != nil
        }
        inflight[id] = Inflight(messageID: message.id, expiresAt: message.expiresAt, entry: entry, tracked: tracked, qos: qos)
        messageIDs.insert(message.id)
        Self.inflightMessages.increment()
        return id
    }

    /// A QoS 2 exchange a resumed session left at PUBREL: its packet id stays taken until
    /// PUBCOMP.
    mutating func resumeRelease(_ packetID: UInt16, placeholder: StoredMessage) {
        if inflight[packetID] == nil { Self.inflightMessages.increment() }
        inflight[packetID] = Inflight(
            messageID: placeholder.id, expiresAt: placeholder.expiresAt, entry: nil, tracked: false, qos: .exactlyOnce, released: true)
    }

    /// PUBACK: the QoS 1 message it acknowledges, or nil when none is in flight under that id
    /// (a late duplicate, ignored).
    mutating func pubAck(_ packetID: UInt16) -> Inflight? {
        guard let done = inflight[packetID], done.qos == .atLeastOnce else { return nil }
        return finish(packetID, done)
    }

    enum PubRecOutcome {
        /// The terminal has the message: PUBREL goes out, the id stays taken until PUBCOMP.
        case release(Inflight)
        /// The terminal refused it (MQTT 5 reason code 0x80 or above): the exchange ends.
        case refused(Inflight)
        /// Nothing awaits a PUBREC under that id: a protocol error.
        case unexpected
    }

    mutating func pubRec(_ ack: MQTTAckPacket) -> PubRecOutcome {
        guard var pending = inflight[ack.packetIdentifier], pending.qos == .exactlyOnce, !pending.released else { return .unexpected }
        guard ack.reasonCode.rawValue < 0x80 else { return .refused(finish(ack.packetIdentifier, pending)) }
        pending.released = true
        inflight[ack.packetIdentifier] = pending
        return .release(pending)
    }

    /// PUBCOMP: the QoS 2 message whose exchange it ends, or nil when none awaits one under
    /// that id (a protocol error).
    mutating func pubComp(_ packetID: UInt16) -> Inflight? {
        guard let done = inflight[packetID], done.released else { return nil }
        return finish(packetID, done)
    }

    private mutating func finish(_ packetID: UInt16, _ done: Inflight) -> Inflight {
        inflight[packetID] = nil
        messageIDs.remove(done.messageID)
        Self.inflightMessages.decrement()
        return done
    }

    /// The connection closed: what was in flight is no longer (a persistent session's
    /// messages wait in Redis for the next connection).
    mutating func abandon() {
        Self.inflightMessages.decrement(by: Double(inflight.count))
        inflight = [:]
        messageIDs = []
    }

    /// QoS 1 and 2 messages sent and not yet acknowledged, over every session of the node.
    static let inflightMessages = Meter(label: "pushfleet_node_inflight_messages")
}
