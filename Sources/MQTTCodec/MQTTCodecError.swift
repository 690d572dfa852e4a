import NIOCore

/// An error raised while decoding or encoding MQTT packets.
///
/// Every decode error is caused by the peer: the connection that produced it should be closed
/// (MQTT 5 peers first get a DISCONNECT with ``reasonCode``). The offending bytes, when known,
/// are kept in ``bytes`` so that logs can show exactly what was received.
public struct MQTTCodecError: Error, Hashable, CustomStringConvertible {
    /// What went wrong, extensible without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        /// The remaining length field used more than four bytes.
        public static let malformedRemainingLength = Code(name: "malformedRemainingLength")
        /// The packet is larger than the configured maximum packet size.
        public static let packetTooLarge = Code(name: "packetTooLarge")
        /// The packet type nibble is 0 or a type the receiver does not accept.
        public static let invalidPacketType = Code(name: "invalidPacketType")
        /// Fixed header flags that the specification reserves were set wrongly.
        public static let invalidFlags = Code(name: "invalidFlags")
        /// A UTF-8 string field is not well-formed UTF-8 or contains U+0000.
        public static let invalidUTF8 = Code(name: "invalidUTF8")
        /// The packet body ended before a field was complete, or had bytes left over.
        public static let malformedPacket = Code(name: "malformedPacket")
        /// A field holds a value the specification forbids (QoS 3, empty topic, ...).
        public static let protocolViolation = Code(name: "protocolViolation")
        /// A value is too large to be encoded.
        public static let valueTooLarge = Code(name: "valueTooLarge")
        public var description: String { name }
    }

    /// The kind of error.
    public var code: Code
    /// A human readable explanation.
    public var message: String
    /// The bytes of the offending packet, when known (capped at 64 bytes).
    public var bytes: [UInt8]

    public init(_ code: Code, _ message: String, bytes: [UInt8] = []) {
        self.code = code
        self.message = message
        self.bytes = Array(bytes.prefix(64))
    }

    /// The MQTT 5 reason code a server sends in DISCONNECT for this error.
    public var reasonCode: MQTTReasonCode {
        switch code {
        case .packetTooLarge: return .packetTooLarge
        case .protocolViolation: return .protocolError
        default: return .malformedPacket
        }
    }

    public var description: String {
        bytes.isEmpty ? "\(code): \(message)" : "\(code): \(message) [\(bytes.map { String($0, radix: 16) }.joined(separator: " "))]"
    }
}
