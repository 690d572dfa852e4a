import Foundation
import Logging

/// How log lines are written (`--log-format`).
public enum LogFormat: String, Sendable, CaseIterable {
    /// One JSON object a line: `ts`, `level`, `logger`, `msg`, `source`, then the metadata
    /// (terminal, node, message, request ids where they apply) as string fields.
    case json
    /// `key=value` pairs a line, values quoted when they need it (logfmt).
    case logfmt
    /// swift-log's own text: timestamp, level, label, metadata, message.
    case text
}

/// A swift-log handler writing one line per message to standard error, as JSON or logfmt.
///
/// A line is written with one `write` call, so lines of different threads do not interleave.
/// Metadata values are written as strings.
public struct FleetLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let format: LogFormat
    private let write: @Sendable (String) -> Void

    /// - Parameter write: where a finished line goes (standard error by default; tests collect).
    public init(label: String, format: LogFormat, write: @escaping @Sendable (String) -> Void = FleetLogHandler.standardError) {
        self.label = label
        self.format = format
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let fields: [(String, String)] =
            [
                ("ts", Self.timestamp()), ("level", event.level.rawValue), ("logger", label), ("msg", "\(event.message)"),
                ("source", event.source),
            ] + merged.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        write(format == .json ? Self.json(fields) : Self.logfmt(fields))
    }

    /// Writes the line and its newline to file descriptor 2 in one `write` (more only if the
    /// kernel takes part of it), so lines of different threads do not interleave.
    public static let standardError: @Sendable (String) -> Void = { line in
        var bytes = Array(line.utf8)
        bytes.append(UInt8(ascii: "\n"))
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Foundation.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += written
            }
        }
    }

    static func timestamp() -> String {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var seconds = time_t(time.tv_sec)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), Int(time.tv_nsec / 1_000_000))
    }

    /// `{"k":"v",...}`, every value a JSON string (RFC 8259 escaping).
    static func json(_ fields: [(String, String)]) -> String {
        var out = "{"
        for (index, (key, value)) in fields.enumerated() {
            if index > 0 { out.append(",") }
            appendJSONString(key, to: &out)
            out.append(":")
            appendJSONString(value, to: &out)
        }
        out.append("}")
        return out
    }

    private static func appendJSONString(_ text: String, to out: inout String) {
        out.append("\"")
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out.append("\\\"")
            case "\\": out.append("\\\\")
            case "\n": out.append("\\n")
            case "\r": out.append("\\r")
            case "\t": out.append("\\t")
            case _ where scalar.value < 0x20:
                out.append(String(format: "\\u%04x", scalar.value))
            default: out.unicodeScalars.append(scalar)
            }
        }
        out.append("\"")
    }

    /// `k=v k2="v with spaces"`: a value is quoted (with `\"`, `\\`, `\n` escaped) when it is
    /// empty or holds a space, `=`, a quote or a control character.
    static func logfmt(_ fields: [(String, String)]) -> String {
        fields.map { key, value in
            let plain = !value.isEmpty && !value.unicodeScalars.contains { $0 == " " || $0 == "=" || $0 == "\"" || $0.value < 0x20 }
            guard !plain else { return "\(key)=\(value)" }
            var quoted = "\""
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": quoted.append("\\\"")
                case "\\": quoted.append("\\\\")
                case "\n": quoted.append("\\n")
                case _ where scalar.value < 0x20: quoted.append(String(format: "\\u%04x", scalar.value))
                default: quoted.unicodeScalars.append(scalar)
                }
            }
            return "\(key)=\(quoted)\""
        }.joined(separator: " ")
    }
}
