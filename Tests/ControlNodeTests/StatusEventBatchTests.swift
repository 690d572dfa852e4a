import FleetCore
import Foundation
import NIOCore
import RedisClient
import Testing

@testable import ControlNode

@Suite struct StatusEventBatchTests {
    static func bulk(_ text: String) -> RedisReply { .bulkString(ByteBuffer(string: text)) }

    static func entry(_ id: String, _ fields: [String]?) -> RedisReply {
        .array([bulk(id), fields.map { .array($0.map(bulk)) } ?? .null])
    }

    static func events(_ events: [StatusEvent]) -> [String] { ["events", StatusEvent.encode(events)] }

    @Test func eventsAreReadInStreamOrderAndEntriesWithoutOneAreStillAcknowledged() {
        let first = StatusEvent(message: "m1", terminal: "tv-\"1\"", state: .delivered, at: 999)
        let second = StatusEvent(message: "m2", terminal: "t", state: .acknowledged, at: 1001)
        let third = StatusEvent(message: "m3", terminal: "t", state: .expired, at: 1001)
        let batch = StatusEventBatch(entries: [
            Self.entry("1000-0", Self.events([first])),
            // Trimmed from the stream while pending.
            Self.entry("1000-1", nil),
            // Not an entry of events.
            Self.entry("1001-0", ["message", "m2", "terminal", "t", "state", "acknowledged", "at", "1"]),
            Self.entry("1001-1", ["events", "[{\"at\":1}]"]),
            Self.entry("1002-0", Self.events([second, third])),
        ])
        #expect(batch.entryIDs == ["1000-0", "1000-1", "1001-0", "1001-1", "1002-0"])
        #expect(
            batch.events == [
                .init(id: "1000-0-0", event: first), .init(id: "1002-0-0", event: second), .init(id: "1002-0-1", event: third),
            ])
    }

    @Test func theBodyIsJSONWithEveryEventEscaped() throws {
        let batch = StatusEventBatch(entries: [
            Self.entry("5-0", Self.events([StatusEvent(message: "m1", terminal: "tv-\"1\"\\", state: .dropped, at: 4)]))
        ])
        #expect(
            String(decoding: batch.body, as: UTF8.self)
                == #"{"events":[{"at":4,"id":"5-0-0","message":"m1","state":"dropped","terminal":"tv-\"1\"\\"}]}"#)
        let parsed = try JSONSerialization.jsonObject(with: Data(batch.body)) as? [String: [[String: Any]]]
        #expect(parsed?["events"]?.first?["terminal"] as? String == "tv-\"1\"\\")
        #expect(String(decoding: StatusEventBatch(entries: []).body, as: UTF8.self) == #"{"events":[]}"#)
    }

    @Test func eventsPastTheirAgeAreDroppedByWhenTheStreamGotThem() {
        let event = StatusEvent(message: "m", terminal: "t", state: .expired, at: 0)
        var batch = StatusEventBatch(entries: (0..<5).map { Self.entry("\(1000 + $0)-0", Self.events([event, event])) })
        #expect(batch.events.count == 10)
        #expect(batch.oldestAddedAt == 1000)
        #expect(batch.dropEvents(addedBefore: 1003) == 6)
        #expect(batch.events.map(\.id) == ["1003-0-0", "1003-0-1", "1004-0-0", "1004-0-1"])
        #expect(batch.oldestAddedAt == 1003)
        #expect(batch.dropEvents(addedBefore: 1003) == 0)
        #expect(batch.dropEvents(addedBefore: 2000) == 4)
        #expect(batch.oldestAddedAt == nil)
        // Every entry read is still acknowledged.
        #expect(batch.entryIDs.count == 5)
    }

    @Test func theSignatureIsHMACSHA256OfTheTimestampADotAndTheBody() {
        // Computed with Python's hmac: hmac.new(b"k" * 16, b"1700000000." + body, sha256).
        #expect(
            StatusEventBatch.signature(
                secret: String(repeating: "k", count: 16), timestamp: 1_700_000_000, body: Array(#"{"events":[]}"#.utf8))
                == "v1=b6c5fb85632612a751cdfdc87802be3dbbe75ba60ff011c18b32422d6f8be8d5")
    }

    @Test func onlyHTTPAndHTTPSURLsWithAHostAreTaken() {
        for url in ["http://127.0.0.1:9000/hook", "https://hooks.example.com/pushfleet?x=1", "HTTPS://example.com"] {
            #expect(StatusWebhookConfiguration.problem(with: url) == nil, "\(url)")
        }
        for url in ["", "ftp://example.com/x", "example.com/hook", "http://", "http:///path", "file:///etc/passwd", "unix:///tmp/s"] {
            #expect(StatusWebhookConfiguration.problem(with: url) != nil, "\(url)")
        }
    }

    @Test func theBackoffDoublesUpToItsMaximum() {
        var webhook = StatusWebhookConfiguration(url: "http://127.0.0.1/x")
        webhook.maximumBackoff = 30
        #expect((0..<7).map { webhook.backoff($0) } == [1, 2, 4, 8, 16, 30, 30].map { Duration.seconds($0) })
        #expect(webhook.backoff(1000) == .seconds(30))
    }
}
