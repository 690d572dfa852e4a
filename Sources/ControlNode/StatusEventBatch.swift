import Crypto
import FleetCore
import RedisClient

/// Status events read from the stream in one go, and the request body that posts them.
///
/// Body: `{"events":[{"at":...,"id":"...","message":"...","state":"...","terminal":"..."},...]}`,
/// in stream order. An event's `id` is its entry's id and its place in the entry
/// (`<ms>-<seq>-<index>`): unique, and the same however often it is posted, so a receiver
/// drops repeats by it. Signed with HMAC-SHA256 over `<timestamp>.<body>` when the webhook has a
/// secret (``signature(secret:timestamp:body:)``).
struct StatusEventBatch: Sendable {
    struct Posted: Equatable, Sendable {
        var id: String
        var event: StatusEvent
    }

    /// The events to post, in stream order.
    private(set) var events: [Posted] = []
    /// Every entry id read, with or without an event: all of them are acknowledged once the
    /// events are posted (or dropped). An entry trimmed from the stream while pending, or one
    /// that is not an event, has nothing to post.
    let entryIDs: [String]

    /// `entries`: `[[id, [field, value, ...]], ...]` as XREADGROUP or XAUTOCLAIM give them.
    init(entries: [RedisReply]) {
        var ids: [String] = []
        for entry in entries {
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { continue }
            ids.append(id)
            guard let text = parts[1].pairs?[StatusEvent.entryField], let decoded = StatusEvent.decode(text) else { continue }
            for (index, event) in decoded.enumerated() { events.append(Posted(id: "\(id)-\(index)", event: event)) }
        }
        entryIDs = ids
    }

    /// Unix milliseconds the entry `id` (`<ms>-<seq>`, or an event's `<ms>-<seq>-<index>`) was added.
    static func addedAt(_ id: String) -> Int64? {
        id.split(separator: "-").first.flatMap { Int64($0) }
    }

    /// Removes the events added to the stream before `millis`; returns how many.
    mutating func dropEvents(addedBefore millis: Int64) -> Int {
        let before = events.count
        events.removeAll { (Self.addedAt($0.id) ?? 0) < millis }
        return before - events.count
    }

    /// When the oldest event left was added to the stream (unix milliseconds).
    var oldestAddedAt: Int64? { events.lazy.compactMap { Self.addedAt($0.id) }.min() }

    var body: [UInt8] {
        var json = JSONWriter(capacity: 64 + events.count * 120)
        json.beginObject()
        json.key("events")
        json.beginArray()
        for posted in events { posted.event.write(to: &json, id: posted.id) }
        json.endArray()
        json.endObject()
        return json.bytes
    }

    /// The `PushFleet-Signature` header's value: `v1=` and the hex HMAC-SHA256, keyed by the
    /// secret, of the timestamp (the `PushFleet-Timestamp` header), a dot and the body.
    static func signature(secret: String, timestamp: Int64, body: [UInt8]) -> String {
        var mac = HMAC<SHA256>(key: SymmetricKey(data: Array(secret.utf8)))
        mac.update(data: Array("\(timestamp).".utf8))
        mac.update(data: body)
        let digest = mac.finalize()
        let hex = Array("0123456789abcdef".utf8)
        var text: [UInt8] = Array("v1=".utf8)
        for byte in digest {
            text.append(hex[Int(byte >> 4)])
            text.append(hex[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
