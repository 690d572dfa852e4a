import FleetCore
import FleetTestSupport
import Foundation
import Testing

/// The hand-written JSON of stored entries and node events agrees with Foundation's.
struct CompactJSONTests {
    static let awkward = [
        "", "plain", "a/b/c", "quote \" backslash \\ slash /", "tab\tnewline\nreturn\r", "\u{1}\u{8}\u{c}\u{1f}", "é 漢字 🚀",
    ]

    static func randomMessage(using generator: inout some RandomNumberGenerator) -> StoredMessage {
        func text() -> String { awkward.randomElement(using: &generator)! }
        var message = StoredMessage(
            id: text(), qos: UInt8.random(in: 0...2, using: &generator), expiresAt: Int64.random(in: -5...Int64.max, using: &generator),
            topic: text(), payload: Array(text().utf8))
        if Bool.random(using: &generator) { message.origin = text() }
        if Bool.random(using: &generator) { message.retain = Bool.random(using: &generator) }
        if Bool.random(using: &generator) { message.session = Bool.random(using: &generator) }
        if Bool.random(using: &generator) { message.format = UInt8.random(in: 0...1, using: &generator) }
        if Bool.random(using: &generator) { message.contentType = text() }
        if Bool.random(using: &generator) { message.responseTopic = text() }
        if Bool.random(using: &generator) { message.correlation = text() }
        if Bool.random(using: &generator) { message.user = (0..<Int.random(in: 0...3, using: &generator)).map { _ in [text(), text()] } }
        return message
    }

    @Test func storedEntriesAreWhatFoundationWritesAndReadBack() throws {
        var generator = SeededGenerator(seed: 0x5EED_0001)
        for _ in 0..<500 {
            let message = Self.randomMessage(using: &generator)
            let foundation = String(decoding: try FleetJSON.encoder.encode(message), as: UTF8.self)
            #expect(message.encoded() == foundation)
            #expect(StoredMessage.decode(foundation) == message)
        }
    }

    @Test func nodeEventsAreWhatFoundationWritesAndReadBack() throws {
        var generator = SeededGenerator(seed: 0x5EED_0002)
        for _ in 0..<300 {
            let kind = [NodeEvent.Kind.wake, .deliver, .kick, .stopped, .publish].randomElement(using: &generator)!
            var event = NodeEvent(kind: kind)
            if Bool.random(using: &generator) { event.terminals = Self.awkward.shuffled(using: &generator) }
            if Bool.random(using: &generator) { event.entries = [Self.randomMessage(using: &generator).encoded(), "x"] }
            if Bool.random(using: &generator) { event.message = Self.randomMessage(using: &generator) }
            if Bool.random(using: &generator) { event.epoch = "e1" }
            if Bool.random(using: &generator) { (event.from, event.successor) = (Self.awkward.randomElement(using: &generator), "e2") }
            if Bool.random(using: &generator) { event.reason = "revoked" }
            if Bool.random(using: &generator) {
                event.target = NodeTarget(ordinary: Bool.random(using: &generator), shares: ["$share/g/a"])
            }
            let foundation = try FleetJSON.encoder.encode(event)
            #expect(event.encoded() == String(decoding: foundation, as: UTF8.self))
            #expect(NodeEvent.decode(Array(foundation)) == event)
        }
    }

    /// Wake events carry stored entries verbatim (`rawEntries`): each comes back byte for byte
    /// (a node removes it from its list by exactly these bytes), and nothing in it is escaped.
    @Test func wakeEventsCarryStoredEntriesVerbatim() throws {
        var generator = SeededGenerator(seed: 0x5EED_0003)
        for _ in 0..<200 {
            let entries = (0..<Int.random(in: 1...5, using: &generator)).map { _ in Self.randomMessage(using: &generator).encoded() }
            var event = NodeEvent(
                kind: .wake, terminals: entries.map { _ in Self.awkward.randomElement(using: &generator)! }, entries: entries)
            event.entriesAreJSON = true
            let text = event.encoded()
            #expect(text.contains("\"rawEntries\":[" + entries.joined(separator: ",") + "]"))
            #expect(!text.contains("\"entries\""))
            let decoded = try #require(NodeEvent.decode(Array(text.utf8)))
            #expect(decoded == event)
            #expect(decoded.entries.map { $0.map { Array($0.utf8) } } == entries.map { Array($0.utf8) })
            // What a node that knows only `entries` reads: the terminals, no entries (it then
            // reads the lists).
            var older = decoded
            older.entries = nil
            older.entriesAreJSON = false
            let withoutRaw = text.replacingOccurrences(of: "\"rawEntries\"", with: "\"unknownKey\"")
            #expect(NodeEvent.decode(Array(withoutRaw.utf8)) == older)
        }
        // Entries from an older control node, as JSON strings, still read.
        let old = #"{"entries":["{\"id\":\"m\"}"],"kind":"wake","terminals":["t"]}"#
        #expect(NodeEvent.decode(Array(old.utf8))?.entries == [#"{"id":"m"}"#])
        // A raw entry that is not JSON makes the event unreadable.
        #expect(NodeEvent.decode(Array(#"{"kind":"wake","rawEntries":[{"a":]}"#.utf8)) == nil)
    }

    @Test func readsOtherValidJSONOfTheSameShape() {
        let text = #"""
             { "topic" : "t\/x" , "id":"\u00e9\ud83d\ude80", "unknown": [1, {"a": null}, -2.5e3, true], "qos": 1,
            "expiresAt": -7, "payload": "", "origin": null, "user": [["k", "v"], []] }
            """#
        let message = StoredMessage.decode(text)
        #expect(message?.topic == "t/x")
        #expect(message?.id == "é🚀")
        #expect(message?.expiresAt == -7)
        #expect(message?.origin == nil)
        #expect(message?.user == [["k", "v"], []])
    }

    @Test func refusesMalformedText() {
        let valid = StoredMessage(id: "m", qos: 1, expiresAt: 0, topic: "t", payload: [1]).encoded()
        var broken = [
            "", "{", "[]", "null", "{\"id\":\"m\"}", valid + "x", valid.replacingOccurrences(of: "\"qos\":1", with: "\"qos\":300"),
            valid.replacingOccurrences(of: "\"qos\":1", with: "\"qos\":\"1\""), "{\"id\":\"a\u{1}\"}", "{\"id\":\"\\ud800\"}",
            "{\"expiresAt\":99999999999999999999}",
        ]
        // Every prefix of a valid entry is incomplete.
        broken += (0..<valid.count).map { String(valid.prefix($0)) }
        for text in broken { #expect(StoredMessage.decode(text) == nil, "\(text)") }
        #expect(NodeEvent.decode(Array("{\"kind\":\"nope\"}".utf8)) == nil)
        #expect(NodeEvent.decode(Array("{\"kind\":\"wake\",\"message\":{}}".utf8)) == nil)
    }
}
