import NIOCore

/// Bytes from a hex string such as "10 14 00 04"; ASCII text can be written as 'abc'.
func hex(_ text: String) -> ByteBuffer {
    var buffer = ByteBuffer()
    var index = text.startIndex
    while index < text.endIndex {
        let character = text[index]
        if character == " " || character == "\n" {
            index = text.index(after: index)
        } else if character == "'" {
            let end = text[text.index(after: index)...].firstIndex(of: "'")!
            buffer.writeString(String(text[text.index(after: index)..<end]))
            index = text.index(after: end)
        } else {
            let next = text.index(index, offsetBy: 2)
            buffer.writeInteger(UInt8(text[index..<next], radix: 16)!)
            index = next
        }
    }
    return buffer
}

extension ByteBuffer {
    var hexDump: String { readableBytesView.map { ($0 < 16 ? "0" : "") + String($0, radix: 16, uppercase: true) }.joined(separator: " ") }
}
