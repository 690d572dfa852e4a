/// The protocol level byte of CONNECT.
public struct MQTTProtocolVersion: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// MQTT 3.1 ("MQIsdp").
    public static let v3_1 = MQTTProtocolVersion(rawValue: 3)
    /// MQTT 3.1.1.
    public static let v3_1_1 = MQTTProtocolVersion(rawValue: 4)
    /// MQTT 5.0.
    public static let v5 = MQTTProtocolVersion(rawValue: 5)

    /// Whether packets carry MQTT 5 properties and reason codes.
    public var hasProperties: Bool { rawValue >= 5 }
    /// Whether this codec can speak the version.
    public var isSupported: Bool { rawValue >= 3 && rawValue <= 5 }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String {
        switch rawValue {
        case 3: return "3.1"
        case 4: return "3.1.1"
        case 5: return "5.0"
        default: return "level \(rawValue)"
        }
    }
}

/// Quality of service of a PUBLISH or a subscription.
public enum MQTTQoS: UInt8, Hashable, Sendable, Comparable, Codable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}
