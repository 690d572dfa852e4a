import Foundation

/// A push message as stored in a terminal's offline list and sent on node channels.
///
/// The JSON text of a stored entry is its identity in the list: a push node removes exactly
/// that text (LREM) once the terminal acknowledged it.
public struct StoredMessage: Codable, Hashable, Sendable {
    /// Message id, assigned once by the control node (or the command stream entry id).
    public var id: String
    /// Delivery QoS (0, 1 or 2), capped by the terminal's subscription.
    public var qos: UInt8
    /// Expiry as unix milliseconds; 0 means "online only" (never stored).
    public var expiresAt: Int64
    /// MQTT topic the terminal receives it on.
    public var topic: String
    /// The payload bytes, base64.
    public var payload: String

    // A message a terminal published (or its will) carries what MQTT forwards with it.
    /// The publishing terminal; nil for pushes from the control API (which get a `message-id`
    /// user property instead of forwarded ones).
    public var origin: String?
    /// The publisher's RETAIN flag (for "retain as published" and retained delivery).
    public var retain: Bool?
    /// Stored for a persistent session's subscription (discarded when that session starts clean).
    public var session: Bool?
    /// MQTT 5 payload format indicator, content type, response topic, correlation data
    /// (base64) and user properties, forwarded unchanged.
    public var format: UInt8?
    public var contentType: String?
    public var responseTopic: String?
    public var correlation: String?
    public var user: [[String]]?

    public init(id: String, qos: UInt8, expiresAt: Int64, topic: String, payload: [UInt8]) {
        self.id = id
        self.qos = qos
        self.expiresAt = expiresAt
        self.topic = topic
        self.payload = Data(payload).base64EncodedString()
    }

    /// Whether a terminal published it (MQTT forwarding rules apply).
    public var isForwarded: Bool { origin != nil }

    /// Whether the terminal's delivery is recorded in the message's status: a push addressed to
    /// it (not a terminal's publish, not a topic push stored for a persistent session).
    public var hasStatus: Bool { origin == nil && session != true }

    /// The payload bytes.
    public var payloadBytes: [UInt8] { Data(base64Encoded: payload).map(Array.init) ?? [] }

    /// Whether the message expired at `nowMillis`.
    public func isExpired(nowMillis: Int64) -> Bool { expiresAt > 0 && expiresAt <= nowMillis }

    /// The JSON text stored in Redis.
    public func encoded() -> String {
        String(decoding: try! FleetJSON.encoder.encode(self), as: UTF8.self)
    }

    /// Parses a stored JSON entry.
    public static func decode(_ text: String) -> StoredMessage? {
        try? FleetJSON.decoder.decode(StoredMessage.self, from: Data(text.utf8))
    }
}

/// An event on a push node's channel or the broadcast channel.
public struct NodeEvent: Codable, Hashable, Sendable {
    public enum Kind: String, Codable, Sendable {
        /// `terminals` have new entries in their stored lists: read and deliver them.
        case wake
        /// Deliver `message` now (online-only unicast, broadcast or topic push); not stored.
        case deliver
        /// Close the connection of `terminals[0]` if its epoch is `epoch` (takeover, revocation).
        case kick
        /// A terminal publish routed to this node: deliver `message` as `target` says.
        case publish
    }

    public var kind: Kind
    public var terminals: [String]?
    public var message: StoredMessage?
    public var epoch: String?
    public var target: NodeTarget?
    /// With `wake`: the new stored entry of each terminal in `terminals` (same order; a
    /// terminal may appear more than once, its entries in list order).
    public var entries: [String]?

    public init(
        kind: Kind, terminals: [String]? = nil, message: StoredMessage? = nil, epoch: String? = nil, target: NodeTarget? = nil,
        entries: [String]? = nil
    ) {
        self.entries = entries
        self.kind = kind
        self.terminals = terminals
        self.message = message
        self.epoch = epoch
        self.target = target
    }

    public func encoded() -> String {
        String(decoding: try! FleetJSON.encoder.encode(self), as: UTF8.self)
    }

    public static func decode(_ bytes: [UInt8]) -> NodeEvent? {
        try? FleetJSON.decoder.decode(NodeEvent.self, from: Data(bytes))
    }
}

/// Shared JSON coders.
public enum FleetJSON {
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
    public static let decoder = JSONDecoder()
}
