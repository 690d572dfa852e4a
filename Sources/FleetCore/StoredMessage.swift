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
    /// A push's collapse key: a terminal's list holds at most one entry waiting per key (a
    /// newer push with the key replaces it).
    public var collapse: String?

    // A message a terminal published (or its will) carries what MQTT forwards with it.
    /// The publishing terminal; nil for pushes from the control API (which get a `message-id`
    /// user property instead of forwarded ones).
    public var origin: String?
    /// The publisher's RETAIN flag (for "retain as published" and retained delivery).
    public var retain: Bool?
    /// Stored for a persistent session's subscription (discarded when that session starts clean).
    public var session: Bool?
    /// The entry field that holds ``session`` (scripts that act on it are given this name).
    public static let sessionField = "session"
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

    /// The JSON text stored in Redis (what `FleetJSON.encoder` writes, without its cost).
    public func encoded() -> String {
        var writer = JSONWriter(capacity: 96 + topic.utf8.count + payload.utf8.count)
        write(to: &writer)
        return writer.text
    }

    func write(to writer: inout JSONWriter) {
        // Keys in sorted order, as `FleetJSON.encoder` writes them.
        writer.beginObject()
        writer.field("collapse", collapse)
        writer.field("contentType", contentType)
        writer.field("correlation", correlation)
        writer.field("expiresAt", integer: expiresAt)
        writer.field("format", integer: format)
        writer.field("id", id)
        writer.field("origin", origin)
        writer.field("payload", payload)
        writer.field("qos", integer: qos)
        writer.field("responseTopic", responseTopic)
        writer.field("retain", bool: retain)
        writer.field(Self.sessionField, bool: session)
        writer.field("topic", topic)
        if let user {
            writer.key("user")
            writer.beginArray()
            for pair in user { writer.strings(pair) }
            writer.endArray()
        }
        writer.endObject()
    }

    /// Parses a stored JSON entry.
    public static func decode(_ text: String) -> StoredMessage? {
        var text = text
        return text.withUTF8 { bytes in
            var scanner = JSONScanner(bytes)
            guard let message = StoredMessage(scanning: &scanner), scanner.atEnd() else { return nil }
            return message
        }
    }

    /// Reads one JSON object; unknown keys are skipped, `null` counts as absent.
    init?(scanning scanner: inout JSONScanner) {
        guard scanner.beginObject() else { return nil }
        var id: String?
        var qos: Int64?
        var expiresAt: Int64?
        var topic: String?
        var payload: String?
        var message = StoredMessage(id: "", qos: 0, expiresAt: 0, topic: "", payload: [])
        while let key = scanner.nextKey() {
            if scanner.null() { continue }
            switch key {
            case "id": id = scanner.string()
            case "qos": qos = scanner.integer()
            case "expiresAt": expiresAt = scanner.integer()
            case "topic": topic = scanner.string()
            case "payload": payload = scanner.string()
            case "origin": message.origin = scanner.string()
            case "collapse": message.collapse = scanner.string()
            case "retain": message.retain = scanner.bool()
            case Self.sessionField: message.session = scanner.bool()
            case "format": message.format = scanner.integer().flatMap { UInt8(exactly: $0) }
            case "contentType": message.contentType = scanner.string()
            case "responseTopic": message.responseTopic = scanner.string()
            case "correlation": message.correlation = scanner.string()
            case "user": message.user = scanner.stringArrays()
            default: _ = scanner.skipValue()
            }
            if scanner.failed { return nil }
        }
        guard !scanner.failed, let id, let qos = qos.flatMap({ UInt8(exactly: $0) }), let expiresAt, let topic, let payload else {
            return nil
        }
        message.id = id
        message.qos = qos
        message.expiresAt = expiresAt
        message.topic = topic
        message.payload = payload
        self = message
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
        /// A takeover names the new connection (`from`: its node, `successor`: its epoch), which
        /// waits for a `stopped` answer before it delivers anything.
        case kick
        /// Answer to a takeover's `kick`: the old connection of `terminals[0]` delivers no more
        /// and what it sent is recorded in Redis; `epoch` is the new connection's.
        case stopped
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
    /// `entries` are JSON texts (stored entries, as the control node writes them): they go
    /// into the event verbatim (`"rawEntries":[{...},...]`) rather than as JSON strings, which
    /// saves escaping every quote in them on one side and unescaping it on the other. A node
    /// that predates the key skips it and reads its terminals' lists instead.
    public var entriesAreJSON = false

    /// Foundation's coding (the reference the hand-written JSON is tested against) has the
    /// string form of `entries` only.
    private enum CodingKeys: String, CodingKey {
        case kind, terminals, message, epoch, target, entries, from, successor, reason
    }
    /// With a takeover's `kick`: the node of the new connection, which waits for `stopped`.
    public var from: String?
    /// With a takeover's `kick`: the new connection's epoch, echoed in `stopped`.
    public var successor: String?
    /// With `kick`: why (`revoked`: the terminal's credentials were revoked); none for a takeover.
    public var reason: String?

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

    /// The JSON text sent on node channels (what `FleetJSON.encoder` writes, without its cost).
    public func encoded() -> String {
        var writer = JSONWriter(capacity: 64 + (entries?.count ?? 0) * 160 + (terminals?.count ?? 0) * 24)
        writer.beginObject()
        if !entriesAreJSON { writer.field("entries", strings: entries) }
        writer.field("epoch", epoch)
        writer.field("from", from)
        writer.field("kind", kind.rawValue)
        if let message {
            writer.key("message")
            message.write(to: &writer)
        }
        if entriesAreJSON, let entries {
            writer.key("rawEntries")
            writer.beginArray()
            for entry in entries { writer.raw(entry) }
            writer.endArray()
        }
        writer.field("reason", reason)
        writer.field("successor", successor)
        if let target {
            writer.key("target")
            writer.beginObject()
            writer.field("ordinary", bool: target.ordinary)
            writer.field("shares", strings: target.shares)
            writer.endObject()
        }
        writer.field("terminals", strings: terminals)
        writer.endObject()
        return writer.text
    }

    public static func decode(_ bytes: [UInt8]) -> NodeEvent? {
        bytes.withUnsafeBufferPointer { bytes in
            var scanner = JSONScanner(bytes)
            guard scanner.beginObject() else { return nil }
            var kind: Kind?
            var event = NodeEvent(kind: .wake)
            while let key = scanner.nextKey() {
                if scanner.null() { continue }
                switch key {
                case "kind": kind = scanner.string().flatMap(Kind.init(rawValue:))
                case "terminals": event.terminals = scanner.strings()
                case "entries": event.entries = scanner.strings()
                case "rawEntries":
                    event.entries = scanner.array { $0.rawValue() }
                    event.entriesAreJSON = true
                case "epoch": event.epoch = scanner.string()
                case "from": event.from = scanner.string()
                case "successor": event.successor = scanner.string()
                case "reason": event.reason = scanner.string()
                case "message":
                    guard let message = StoredMessage(scanning: &scanner) else { return nil }
                    event.message = message
                case "target":
                    guard scanner.beginObject() else { return nil }
                    var target = NodeTarget()
                    while let key = scanner.nextKey() {
                        switch key {
                        case "ordinary": target.ordinary = scanner.bool() ?? false
                        case "shares": target.shares = scanner.strings() ?? []
                        default: _ = scanner.skipValue()
                        }
                    }
                    event.target = target
                default: _ = scanner.skipValue()
                }
                if scanner.failed { return nil }
            }
            guard !scanner.failed, scanner.atEnd(), let kind else { return nil }
            event.kind = kind
            return event
        }
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
