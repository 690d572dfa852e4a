import NIOCore

// Primitive MQTT field readers and writers. Readers throw `malformedPacket` when the body
// ends early: by the time a body is parsed the frame is complete, so a short field is the
// peer's fault, not a reason to wait for more bytes.
extension ByteBuffer {
    @inlinable
    mutating func mqttReadByte() throws -> UInt8 {
        guard let value = readInteger(as: UInt8.self) else { throw MQTTCodecError(.malformedPacket, "packet ends inside a byte field") }
        return value
    }

    @inlinable
    mutating func mqttReadUInt16() throws -> UInt16 {
        guard let value = readInteger(as: UInt16.self) else {
            throw MQTTCodecError(.malformedPacket, "packet ends inside a two byte integer")
        }
        return value
    }

    @inlinable
    mutating func mqttReadUInt32() throws -> UInt32 {
        guard let value = readInteger(as: UInt32.self) else {
            throw MQTTCodecError(.malformedPacket, "packet ends inside a four byte integer")
        }
        return value
    }

    /// Reads a variable byte integer; `nil` when more bytes are needed (only used for framing).
    mutating func mqttReadVariableIntegerIfComplete() throws -> UInt32? {
        var value: UInt32 = 0
        var multiplier: UInt32 = 1
        for index in 0..<4 {
            guard let byte = readInteger(as: UInt8.self) else { return nil }
            value += UInt32(byte & 0x7F) * multiplier
            if byte & 0x80 == 0 { return value }
            multiplier *= 128
            if index == 3 { break }
        }
        throw MQTTCodecError(.malformedRemainingLength, "variable byte integer longer than four bytes")
    }

    mutating func mqttReadVariableInteger() throws -> UInt32 {
        guard let value = try mqttReadVariableIntegerIfComplete() else {
            throw MQTTCodecError(.malformedPacket, "packet ends inside a variable byte integer")
        }
        return value
    }

    mutating func mqttReadBinary() throws -> [UInt8] {
        let length = Int(try mqttReadUInt16())
        guard let bytes = readBytes(length: length) else { throw MQTTCodecError(.malformedPacket, "packet ends inside a binary field") }
        return bytes
    }

    mutating func mqttReadString() throws -> String {
        let length = Int(try mqttReadUInt16())
        guard let slice = readSlice(length: length) else { throw MQTTCodecError(.malformedPacket, "packet ends inside a string field") }
        return try slice.mqttValidatedString()
    }

    /// Decodes the readable bytes as an MQTT UTF-8 string: well-formed, without U+0000.
    func mqttValidatedString() throws -> String {
        let bytes = readableBytesView
        if bytes.contains(0) { throw MQTTCodecError(.invalidUTF8, "string contains U+0000", bytes: Array(bytes)) }
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw MQTTCodecError(.invalidUTF8, "string is not well-formed UTF-8", bytes: Array(bytes))
        }
        return string
    }

    @inlinable
    mutating func mqttWriteVariableInteger(_ value: UInt32) {
        var remaining = value
        repeat {
            var byte = UInt8(remaining & 0x7F)
            remaining >>= 7
            if remaining > 0 { byte |= 0x80 }
            writeInteger(byte)
        } while remaining > 0
    }

    mutating func mqttWriteString(_ string: String) throws {
        let count = string.utf8.count
        guard count <= Int(UInt16.max) else { throw MQTTCodecError(.valueTooLarge, "string of \(count) bytes exceeds 65535") }
        writeInteger(UInt16(count))
        writeString(string)
    }

    mutating func mqttWriteBinary(_ bytes: [UInt8]) throws {
        guard bytes.count <= Int(UInt16.max) else { throw MQTTCodecError(.valueTooLarge, "binary of \(bytes.count) bytes exceeds 65535") }
        writeInteger(UInt16(bytes.count))
        writeBytes(bytes)
    }
}

/// The number of bytes a variable byte integer takes.
@inlinable
func mqttVariableIntegerSize(_ value: UInt32) -> Int {
    switch value {
    case 0..<128: return 1
    case 128..<16_384: return 2
    case 16_384..<2_097_152: return 3
    default: return 4
    }
}

/// The largest value a variable byte integer can hold.
public let mqttMaximumVariableInteger: UInt32 = 268_435_455
