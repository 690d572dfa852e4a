import NIOCore

/// An MQTT 5 property identifier.
public struct MQTTPropertyIdentifier: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    init(_ rawValue: UInt32) { self.rawValue = rawValue }

    public static let payloadFormatIndicator = Self(0x01)
    public static let messageExpiryInterval = Self(0x02)
    public static let contentType = Self(0x03)
    public static let responseTopic = Self(0x08)
    public static let correlationData = Self(0x09)
    public static let subscriptionIdentifier = Self(0x0B)
    public static let sessionExpiryInterval = Self(0x11)
    public static let assignedClientIdentifier = Self(0x12)
    public static let serverKeepAlive = Self(0x13)
    public static let authenticationMethod = Self(0x15)
    public static let authenticationData = Self(0x16)
    public static let requestProblemInformation = Self(0x17)
    public static let willDelayInterval = Self(0x18)
    public static let requestResponseInformation = Self(0x19)
    public static let responseInformation = Self(0x1A)
    public static let serverReference = Self(0x1C)
    public static let reasonString = Self(0x1F)
    public static let receiveMaximum = Self(0x21)
    public static let topicAliasMaximum = Self(0x22)
    public static let topicAlias = Self(0x23)
    public static let maximumQoS = Self(0x24)
    public static let retainAvailable = Self(0x25)
    public static let userProperty = Self(0x26)
    public static let maximumPacketSize = Self(0x27)
    public static let wildcardSubscriptionAvailable = Self(0x28)
    public static let subscriptionIdentifierAvailable = Self(0x29)
    public static let sharedSubscriptionAvailable = Self(0x2A)

    /// The wire type of the property's value; `nil` for identifiers MQTT 5.0 does not define.
    var valueKind: MQTTProperty.Kind? {
        switch rawValue {
        case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: return .byte
        case 0x13, 0x21, 0x22, 0x23: return .twoByteInteger
        case 0x02, 0x11, 0x18, 0x27: return .fourByteInteger
        case 0x0B: return .variableInteger
        case 0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F: return .string
        case 0x09, 0x16: return .binary
        case 0x26: return .stringPair
        default: return nil
        }
    }
}

/// One MQTT 5 property: an identifier and a typed value.
public struct MQTTProperty: Hashable, Sendable {
    enum Kind { case byte, twoByteInteger, fourByteInteger, variableInteger, string, binary, stringPair }

    /// A property value, in the wire type its identifier defines.
    public enum Value: Hashable, Sendable {
        case byte(UInt8)
        case twoByteInteger(UInt16)
        case fourByteInteger(UInt32)
        case variableInteger(UInt32)
        case string(String)
        case binary([UInt8])
        case stringPair(String, String)

        var kind: Kind {
            switch self {
            case .byte: return .byte
            case .twoByteInteger: return .twoByteInteger
            case .fourByteInteger: return .fourByteInteger
            case .variableInteger: return .variableInteger
            case .string: return .string
            case .binary: return .binary
            case .stringPair: return .stringPair
            }
        }
    }

    public var identifier: MQTTPropertyIdentifier
    public var value: Value

    public init(_ identifier: MQTTPropertyIdentifier, _ value: Value) {
        self.identifier = identifier
        self.value = value
    }
}

/// The property list of an MQTT 5 packet, in wire order.
public struct MQTTProperties: Hashable, Sendable, ExpressibleByArrayLiteral {
    public var properties: [MQTTProperty]

    public init(_ properties: [MQTTProperty] = []) { self.properties = properties }
    public init(arrayLiteral elements: MQTTProperty...) { self.properties = elements }

    public var isEmpty: Bool { properties.isEmpty }

    /// The first value for `identifier`.
    public subscript(_ identifier: MQTTPropertyIdentifier) -> MQTTProperty.Value? {
        properties.first { $0.identifier == identifier }?.value
    }

    /// Appends a property.
    public mutating func append(_ identifier: MQTTPropertyIdentifier, _ value: MQTTProperty.Value) {
        properties.append(MQTTProperty(identifier, value))
    }

    /// An integer property's value, whatever its integer width.
    public func integer(_ identifier: MQTTPropertyIdentifier) -> UInt32? {
        switch self[identifier] {
        case .byte(let v): return UInt32(v)
        case .twoByteInteger(let v): return UInt32(v)
        case .fourByteInteger(let v), .variableInteger(let v): return v
        default: return nil
        }
    }

    /// All user properties, in order.
    public var userProperties: [(String, String)] {
        properties.compactMap {
            if case .stringPair(let key, let value) = $0.value { return (key, value) }
            return nil
        }
    }

    /// Bytes of the user properties' names and values (UTF-8), what a bound on them counts.
    public var userPropertyBytes: Int {
        properties.reduce(0) {
            if case .stringPair(let key, let value) = $1.value { return $0 + key.utf8.count + value.utf8.count }
            return $0
        }
    }

    /// Reads a property length and that many bytes of properties.
    static func read(from buffer: inout ByteBuffer) throws -> MQTTProperties {
        let length = Int(try buffer.mqttReadVariableInteger())
        guard var slice = buffer.readSlice(length: length) else {
            throw MQTTCodecError(.malformedPacket, "property length \(length) exceeds the packet")
        }
        var result: [MQTTProperty] = []
        while slice.readableBytes > 0 {
            let identifier = MQTTPropertyIdentifier(rawValue: try slice.mqttReadVariableInteger())
            guard let kind = identifier.valueKind else {
                throw MQTTCodecError(.malformedPacket, "unknown property identifier 0x\(String(identifier.rawValue, radix: 16))")
            }
            let value: MQTTProperty.Value
            switch kind {
            case .byte: value = .byte(try slice.mqttReadByte())
            case .twoByteInteger: value = .twoByteInteger(try slice.mqttReadUInt16())
            case .fourByteInteger: value = .fourByteInteger(try slice.mqttReadUInt32())
            case .variableInteger: value = .variableInteger(try slice.mqttReadVariableInteger())
            case .string: value = .string(try slice.mqttReadString())
            case .binary: value = .binary(try slice.mqttReadBinary())
            case .stringPair: value = .stringPair(try slice.mqttReadString(), try slice.mqttReadString())
            }
            result.append(MQTTProperty(identifier, value))
        }
        return MQTTProperties(result)
    }

    /// Writes the property length followed by the properties.
    func write(to buffer: inout ByteBuffer) throws {
        var body = ByteBuffer()
        for property in properties {
            guard property.identifier.valueKind == property.value.kind else {
                throw MQTTCodecError(
                    .protocolViolation, "property 0x\(String(property.identifier.rawValue, radix: 16)) has the wrong value type")
            }
            body.mqttWriteVariableInteger(property.identifier.rawValue)
            switch property.value {
            case .byte(let v): body.writeInteger(v)
            case .twoByteInteger(let v): body.writeInteger(v)
            case .fourByteInteger(let v): body.writeInteger(v)
            case .variableInteger(let v): body.mqttWriteVariableInteger(v)
            case .string(let s): try body.mqttWriteString(s)
            case .binary(let b): try body.mqttWriteBinary(b)
            case .stringPair(let k, let v):
                try body.mqttWriteString(k)
                try body.mqttWriteString(v)
            }
        }
        buffer.mqttWriteVariableInteger(UInt32(body.readableBytes))
        buffer.writeImmutableBuffer(body)
    }
}
