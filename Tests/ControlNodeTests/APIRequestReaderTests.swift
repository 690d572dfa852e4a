import FleetCore
import FleetTestSupport
import Foundation
import NIOCore
import Testing

@testable import ControlNode

/// The scanning readers of push and batch bodies (``ScannableRequest``) take plainly valid
/// text and read it as `JSONDecoder` does; anything else they leave to `JSONDecoder`, so what
/// the API accepts and the errors it answers are unchanged.
struct APIRequestReaderTests {
    static func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    static func foundation<T: Decodable>(_ type: T.Type, _ text: String) -> T? {
        try? APIRequestBody.decodeWithFoundation(T.self, from: buffer(text))
    }

    @Test func plainBodiesAreScannedAndReadAsJSONDecoderReadsThem() throws {
        let pushes = [
            #"{"to":["t1"],"payload":"hello"}"#,
            #"{"to":["t1","t2"],"payloadBase64":"aGk=","qos":0,"ttl":60,"idempotencyKey":"k-1"}"#,
            #"{"topic":"news/sport","payload":"é 漢字 🚀","qos":2,"ttl":0}"#,
            #"{"broadcast":true,"payload":"\u00e9\ud83d\ude80 \"quoted\" back\\slash \/ \n","ttl":-1}"#,
            #" { "to" : [ ] , "payload" : null , "qos" : null , "broadcast" : false } "#,
            #"{"unknown":{"a":[1,-2.5e3,true,null,{"b":"c"}]},"to":["t"],"x":0.5,"y":-0,"z":1E+2}"#,
            #"{}"#,
            #"{"qos":-3,"ttl":9223372036854775807}"#,
        ]
        for text in pushes {
            let scanned = PushRequest.scanned(from: Self.buffer(text))
            #expect(scanned != nil, "\(text)")
            #expect(scanned == Self.foundation(PushRequest.self, text), "\(text)")
        }
        let batch = "{\"messages\":[" + pushes.joined(separator: ",") + "],\"extra\":[]}"
        let scanned = try #require(BatchRequest.scanned(from: Self.buffer(batch)))
        #expect(scanned.messages.count == pushes.count)
        #expect(scanned == Self.foundation(BatchRequest.self, batch))
    }

    @Test func anythingElseIsLeftToJSONDecoderAndAnsweredAsItAnswers() throws {
        let bodies = [
            // Not plainly valid JSON, or not the shape.
            "", "null", "[]", "{", #"{"to":["a"]"#, #"{"to":["a"]} x"#, #"{,"to":["a"]}"#, #"{"to":["a"] "qos":1}"#,
            #"{"to":["a"],}"#, #"{"to":["a",]}"#, #"{"to":"a"}"#, #"{"to":[1]}"#, #"{"qos":"1"}"#, #"{"broadcast":1}"#,
            // Numbers JSONDecoder may read as integers, or refuse: it decides.
            #"{"qos":1.0}"#, #"{"qos":1e0}"#, #"{"qos":01}"#, #"{"qos":-}"#, #"{"ttl":99999999999999999999}"#,
            #"{"x":1-2,"to":["a"]}"#, #"{"x":.5}"#, #"{"x":1.}"#,
            // A key twice.
            #"{"to":["a"],"to":["b"]}"#, #"{"qos":1,"qos":2}"#,
            // Escapes and bytes that are not text.
            #"{"payload":"\ud800"}"#, #"{"payload":"\x"}"#, "{\"payload\":\"a\u{1}\"}",
        ]
        // Bodies a push reads (as unknown keys) but a batch does not.
        let batches = [#"{"messages":null}"#, #"{"messages":[{"to":["a"]},]}"#, #"{"messages":[{"to":["a"]}],"messages":[]}"#]
        for text in batches {
            #expect(BatchRequest.scanned(from: Self.buffer(text)) == nil, "\(text)")
            let result = try? APIRequestBody.decode(BatchRequest.self, from: Self.buffer(text))
            #expect(result == Self.foundation(BatchRequest.self, text), "\(text)")
        }
        var checked = 0
        for text in bodies {
            #expect(PushRequest.scanned(from: Self.buffer(text)) == nil, "\(text)")
            #expect(BatchRequest.scanned(from: Self.buffer(text)) == nil, "\(text)")
            for result in [try? APIRequestBody.decode(PushRequest.self, from: Self.buffer(text))] {
                #expect(result == Self.foundation(PushRequest.self, text), "\(text)")
                checked += 1
            }
        }
        // Invalid UTF-8 inside a string.
        var invalid = ByteBuffer(string: #"{"payload":""#)
        invalid.writeBytes([0xC3, 0x28])
        invalid.writeString(#""}"#)
        #expect(PushRequest.scanned(from: invalid) == nil)
        #expect(checked == bodies.count)
    }

    /// Random bodies of the push's shape, spaced and escaped at random, some with one byte
    /// changed: every body the scanning reader takes, `JSONDecoder` takes and reads the same.
    @Test func randomBodiesReadTheSameEitherWay() {
        var generator = SeededGenerator(seed: 0x5EED_00A1)
        let texts = ["t1", "é", "漢字🚀", "quote \" and \\", "line\nbreak", "", "/a/b"]
        var scannedCount = 0
        let rounds = 2_000
        for _ in 0..<rounds {
            func space() -> String { ["", " ", "\n\t ", "  "].randomElement(using: &generator)! }
            func string() -> String {
                let text = texts.randomElement(using: &generator)!
                let encoded = String(decoding: try! JSONEncoder().encode(text), as: UTF8.self)
                return Bool.random(using: &generator) ? encoded : encoded.replacingOccurrences(of: "é", with: "\\u00e9")
            }
            func value(_ key: String) -> String {
                if Int.random(in: 0..<8, using: &generator) == 0 { return "null" }
                switch key {
                case "to":
                    return "["
                        + (0..<Int.random(in: 0...3, using: &generator)).map { _ in space() + string() + space() }.joined(separator: ",")
                        + "]"
                case "broadcast": return Bool.random(using: &generator) ? "true" : "false"
                case "qos", "ttl": return ["0", "1", "2", "-1", "86400", "1.0", "1e2", "07", "-0"].randomElement(using: &generator)!
                case "unknown": return ["{}", "[1,{\"a\":null}]", "-2.5e-3", "\"x\"", "true"].randomElement(using: &generator)!
                default: return string()
                }
            }
            let keys = ["to", "topic", "broadcast", "payload", "payloadBase64", "qos", "ttl", "idempotencyKey", "unknown"]
            let members = keys.shuffled(using: &generator).prefix(Int.random(in: 0...5, using: &generator)).map { key in
                space() + "\"\(key)\"" + space() + ":" + space() + value(key) + space()
            }
            var bytes = Array(("{" + members.joined(separator: ",") + "}").utf8)
            if Int.random(in: 0..<4, using: &generator) == 0, !bytes.isEmpty {
                let at = Int.random(in: 0..<bytes.count, using: &generator)
                bytes[at] = [UInt8(ascii: ","), UInt8(ascii: "\""), UInt8(ascii: "}"), UInt8(ascii: "1"), 0xFF].randomElement(
                    using: &generator)!
            }
            let body = ByteBuffer(bytes: bytes)
            if PushRequest.scanned(from: body) != nil { scannedCount += 1 }
            #expect(ControlNodeFuzzing.readersAgree(route: 1, body).isEmpty, "\(String(decoding: bytes, as: UTF8.self))")
            let batch = ByteBuffer(bytes: Array("{\"messages\":[".utf8) + bytes + Array("]}".utf8))
            #expect(ControlNodeFuzzing.readersAgree(route: 2, batch).isEmpty, "\(String(decoding: bytes, as: UTF8.self))")
        }
        // Most bodies are plain: the comparison above is not vacuous.
        #expect(scannedCount > rounds / 3)
    }

    @Test func batchResultsAreWrittenAsFoundationWritesThem() throws {
        let awkward = ["", "plain", "quote \" backslash \\ slash /", "tab\tnewline\n", "\u{1}\u{1f}", "é 漢字 🚀"]
        var generator = SeededGenerator(seed: 0x5EED_00A2)
        for _ in 0..<200 {
            let results = (0..<Int.random(in: 0...5, using: &generator)).map { _ -> ControlAPI.BatchResult in
                if Bool.random(using: &generator) {
                    return .init(id: awkward.randomElement(using: &generator)!, targets: Int.random(in: 0...100_000, using: &generator))
                }
                return .init(
                    error: .init(code: awkward.randomElement(using: &generator)!, message: awkward.randomElement(using: &generator)!))
            }
            let foundation = try FleetJSON.encoder.encode(["results": results])
            #expect(ControlAPI.BatchResult.json(results) == Array(foundation))
        }
    }
}
