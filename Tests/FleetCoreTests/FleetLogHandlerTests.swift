import FleetCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing

/// Log lines in JSON and logfmt: one line per message, every field there, values escaped so a
/// line always parses back, whatever the message or metadata hold.
struct FleetLogHandlerTests {
    func lines(_ format: LogFormat, _ body: (Logger) -> Void) -> [String] {
        let written = NIOLockedValueBox<[String]>([])
        var handler = FleetLogHandler(label: "pushfleet.test", format: format) { line in written.withLockedValue { $0.append(line) } }
        handler.logLevel = .debug
        handler[metadataKey: "node"] = "n1"
        body(Logger(label: "pushfleet.test", factory: { _ in handler }))
        return written.withLockedValue { $0 }
    }

    @Test func jsonLinesParseWithEveryField() throws {
        let written = lines(.json) { logger in
            logger.info("connect refused", metadata: ["terminal": "t\"1\\\n", "reason": "bad\tcredential\u{1}"])
            logger.trace("not at this level")
        }
        try #require(written.count == 1)
        #expect(!written[0].contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as? [String: String])
        #expect(object["msg"] == "connect refused" && object["level"] == "info" && object["logger"] == "pushfleet.test")
        #expect(object["terminal"] == "t\"1\\\n" && object["reason"] == "bad\tcredential\u{1}" && object["node"] == "n1")
        #expect(object["ts"]?.hasSuffix("Z") == true && object["ts"]?.count == 24)
    }

    @Test func logfmtQuotesWhatNeedsIt() throws {
        let written = lines(.logfmt) { logger in
            logger.warning("redis unavailable", metadata: ["attempt": "3", "reason": "connection \"closed\"", "empty": ""])
        }
        try #require(written.count == 1)
        let line = written[0]
        #expect(line.contains(" level=warning ") && line.contains(" msg=\"redis unavailable\" ") && line.contains(" attempt=3 "))
        #expect(line.contains(#"reason="connection \"closed\"""#) && line.contains(#"empty="""#) && line.contains(" node=n1"))
        #expect(line.hasPrefix("ts=") && !line.contains("\n"))
    }
}
