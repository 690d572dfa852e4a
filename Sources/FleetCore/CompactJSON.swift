/// Writes JSON text for the fleet's hot-path records (stored entries, node events) without
/// Foundation's `JSONEncoder`, producing the same text it does with `.sortedKeys` and
/// `.withoutEscapingSlashes`: callers write keys in sorted order.
package struct JSONWriter {
    package private(set) var bytes: [UInt8] = []
    /// Bit `depth` set: the container at that depth has no element yet.
    private var empty: UInt64 = 0
    private var depth = 0

    package init(capacity: Int = 128) {
        bytes.reserveCapacity(capacity)
    }

    package var text: String { String(decoding: bytes, as: UTF8.self) }

    package mutating func beginObject() { open(UInt8(ascii: "{")) }
    package mutating func endObject() { close(UInt8(ascii: "}")) }
    package mutating func beginArray() { open(UInt8(ascii: "[")) }
    package mutating func endArray() { close(UInt8(ascii: "]")) }

    /// Writes `"name":`; the value follows.
    package mutating func key(_ name: String) {
        separate()
        quoted(name)
        bytes.append(UInt8(ascii: ":"))
        // The value is not an element of its own.
        empty |= 1 << depth
    }

    package mutating func string(_ value: String) {
        separate()
        quoted(value)
    }

    package mutating func integer<I: BinaryInteger>(_ value: I) {
        separate()
        bytes.append(contentsOf: String(value).utf8)
    }

    /// A value that is JSON text already, written as it is (the caller vouches for it).
    package mutating func raw(_ json: String) {
        separate()
        bytes.append(contentsOf: json.utf8)
    }

    package mutating func bool(_ value: Bool) {
        separate()
        bytes.append(contentsOf: (value ? "true" : "false").utf8)
    }

    /// `"name":value` when `value` is present; nothing otherwise (as `encodeIfPresent`).
    package mutating func field(_ name: String, _ value: String?) {
        guard let value else { return }
        key(name)
        string(value)
    }

    package mutating func field<I: BinaryInteger>(_ name: String, integer value: I?) {
        guard let value else { return }
        key(name)
        integer(value)
    }

    package mutating func field(_ name: String, bool value: Bool?) {
        guard let value else { return }
        key(name)
        bool(value)
    }

    package mutating func field(_ name: String, strings value: [String]?) {
        guard let value else { return }
        key(name)
        strings(value)
    }

    package mutating func strings(_ values: [String]) {
        beginArray()
        for value in values { string(value) }
        endArray()
    }

    private mutating func open(_ byte: UInt8) {
        separate()
        bytes.append(byte)
        depth += 1
        empty |= 1 << depth
    }

    private mutating func close(_ byte: UInt8) {
        bytes.append(byte)
        depth -= 1
    }

    /// A comma before every element of a container but its first.
    private mutating func separate() {
        let bit: UInt64 = 1 << depth
        if empty & bit != 0 {
            empty &= ~bit
        } else if depth > 0 {
            bytes.append(UInt8(ascii: ","))
        }
    }

    private mutating func quoted(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            // Runs of bytes that need no escape are copied in one go: ids, topics and base64
            // have none, an entry carried inside an event a quote every few bytes.
            var run = 0
            for index in utf8.indices {
                let byte = utf8[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run..<index]))
                run = index + 1
                bytes.append(UInt8(ascii: "\\"))
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): bytes.append(byte)
                case 0x08: bytes.append(UInt8(ascii: "b"))
                case 0x0C: bytes.append(UInt8(ascii: "f"))
                case 0x0A: bytes.append(UInt8(ascii: "n"))
                case 0x0D: bytes.append(UInt8(ascii: "r"))
                case 0x09: bytes.append(UInt8(ascii: "t"))
                default:
                    bytes.append(contentsOf: "u00".utf8)
                    bytes.append(Self.hexDigits[Int(byte >> 4)])
                    bytes.append(Self.hexDigits[Int(byte & 0x0F)])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run...]))
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
}

/// Reads JSON text field by field, for the records ``JSONWriter`` writes (and any other valid
/// JSON of the same shape: whitespace, escapes and unknown keys are accepted).
///
/// Every read returns nil (or false) on malformed input and marks the scanner failed.
package struct JSONScanner {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var position = 0
    package private(set) var failed = false

    /// Strings that are not valid UTF-8 fail the read instead of being repaired: set for
    /// request bodies, whose reader must accept only what `JSONDecoder` accepts.
    package var validatesUTF8 = false

    package init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    /// Whether only whitespace is left.
    package mutating func atEnd() -> Bool {
        skipWhitespace()
        return position == bytes.count
    }

    package mutating func beginObject() -> Bool { expect(UInt8(ascii: "{")) }

    /// The next key of the object being read (its `:` consumed), or nil at its end (or on
    /// malformed input: check ``failed``).
    package mutating func nextKey() -> String? {
        guard !failed else { return nil }
        skipWhitespace()
        guard position < bytes.count else { return fail() }
        if bytes[position] == UInt8(ascii: "}") {
            position += 1
            return nil
        }
        if bytes[position] == UInt8(ascii: ",") {
            position += 1
            skipWhitespace()
        }
        guard let key = string(), expect(UInt8(ascii: ":")) else { return fail() }
        return key
    }

    /// Whether the next value is `null` (consumed if so).
    package mutating func null() -> Bool {
        skipWhitespace()
        guard bytes.count - position >= 4, bytes[position] == UInt8(ascii: "n") else { return false }
        guard literal("null") else { return false }
        return true
    }

    package mutating func string() -> String? {
        guard expect(UInt8(ascii: "\"")) else { return nil }
        let start = position
        var ascii = true
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                let utf8 = UnsafeBufferPointer(rebasing: bytes[start..<position])
                position += 1
                // ASCII (ids, base64, most topics) needs no validation: `String(validating:)`
                // is generic and instantiates type metadata on every call.
                guard validatesUTF8, !ascii else { return String(decoding: utf8, as: UTF8.self) }
                return String(validating: utf8, as: UTF8.self) ?? fail()
            }
            if byte >= 0x80 { ascii = false }
            if byte == UInt8(ascii: "\\") { return escapedString(from: start) }
            if byte < 0x20 { return fail() }
            position += 1
        }
        return fail()
    }

    package mutating func integer() -> Int64? {
        skipWhitespace()
        var negative = false
        if position < bytes.count, bytes[position] == UInt8(ascii: "-") {
            negative = true
            position += 1
        }
        var value: Int64 = 0
        let start = position
        while position < bytes.count, case let digit = bytes[position] &- UInt8(ascii: "0"), digit < 10 {
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int64(digit))
            guard !overflow1, !overflow2 else { return fail() }
            value = sum
            position += 1
        }
        guard position > start else { return fail() }
        return negative ? -value : value
    }

    package mutating func bool() -> Bool? {
        skipWhitespace()
        guard position < bytes.count else { return fail() }
        if bytes[position] == UInt8(ascii: "t") { return literal("true") ? true : nil }
        return literal("false") ? false : nil
    }

    package mutating func strings() -> [String]? { array { $0.string() } }

    package mutating func stringArrays() -> [[String]]? { array { $0.strings() } }

    /// A JSON array whose elements `element` reads.
    package mutating func array<Element>(_ element: (inout JSONScanner) -> Element?) -> [Element]? {
        guard expect(UInt8(ascii: "[")) else { return nil }
        var values: [Element] = []
        if peek(UInt8(ascii: "]")) { return values }
        repeat {
            guard let value = element(&self) else { return nil }
            values.append(value)
        } while peek(UInt8(ascii: ","))
        return expect(UInt8(ascii: "]")) ? values : nil
    }

    /// Reads an object whose members are separated exactly as JSON requires, calling `member`
    /// with each key and the scanner at its value, which `member` reads. False when the object
    /// is malformed or `member` returns false.
    package mutating func object(_ member: (inout JSONScanner, String) -> Bool) -> Bool {
        guard expect(UInt8(ascii: "{")) else { return false }
        if peek(UInt8(ascii: "}")) { return true }
        repeat {
            guard let key = string(), expect(UInt8(ascii: ":")), member(&self, key) else { return false }
        } while peek(UInt8(ascii: ","))
        return expect(UInt8(ascii: "}"))
    }

    /// An integer written as JSON writes one (no leading zero, no fraction or exponent):
    /// nil for any other number, which a caller that must agree with `JSONDecoder` leaves to it.
    package mutating func plainInteger() -> Int64? {
        skipWhitespace()
        let start = position
        guard let value = integer() else { return nil }
        let digits = bytes[start] == UInt8(ascii: "-") ? start + 1 : start
        if position - digits > 1, bytes[digits] == UInt8(ascii: "0") { return fail() }
        if position < bytes.count, Self.numberBytes.contains(bytes[position]) { return fail() }
        return value
    }

    /// The next value's text exactly as written, checked as ``skipValue(depth:)`` checks it.
    package mutating func rawValue() -> String? {
        skipWhitespace()
        let start = position
        guard skipValue() else { return nil }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
    }

    /// Objects and arrays an unknown value may nest at most: skipping recurses once per level,
    /// and the bytes come from Redis, which anyone with access may write.
    static let maximumDepth = 64

    /// Skips one value of any kind (an unknown key's).
    package mutating func skipValue(depth: Int = 0) -> Bool {
        skipWhitespace()
        guard depth < Self.maximumDepth else { return fail() ?? false }
        guard position < bytes.count else { return fail() ?? false }
        switch bytes[position] {
        case UInt8(ascii: "\""):
            return string() != nil
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let opening = bytes[position]
            let closing = opening == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
            position += 1
            if peek(closing) { return true }
            repeat {
                if opening == UInt8(ascii: "{") {
                    guard string() != nil, expect(UInt8(ascii: ":")) else { return false }
                }
                guard skipValue(depth: depth + 1) else { return false }
            } while peek(UInt8(ascii: ","))
            return expect(closing)
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            return bool() != nil
        case UInt8(ascii: "n"):
            return literal("null")
        default:
            return skipNumber()
        }
    }

    /// A number as JSON's grammar has it: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    private mutating func skipNumber() -> Bool {
        func digits(_ scanner: inout JSONScanner) -> Int {
            let start = scanner.position
            while scanner.position < scanner.bytes.count, scanner.bytes[scanner.position] &- UInt8(ascii: "0") < 10 {
                scanner.position += 1
            }
            return scanner.position - start
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: "-") { position += 1 }
        let integerStart = position
        let integerDigits = digits(&self)
        guard integerDigits > 0, integerDigits == 1 || bytes[integerStart] != UInt8(ascii: "0") else { return fail() ?? false }
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            position += 1
            guard digits(&self) > 0 else { return fail() ?? false }
        }
        if position < bytes.count, bytes[position] | 0x20 == UInt8(ascii: "e") {
            position += 1
            if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") { position += 1 }
            guard digits(&self) > 0 else { return fail() ?? false }
        }
        if position < bytes.count, Self.numberBytes.contains(bytes[position]) { return fail() ?? false }
        return true
    }

    private static let numberBytes = Set("+-.0123456789eE".utf8)

    private mutating func escapedString(from start: Int) -> String? {
        var text = Array(UnsafeBufferPointer(rebasing: bytes[start..<position]))
        while position < bytes.count {
            // The bytes up to the next quote, backslash or control byte, in one go.
            let run = position
            while position < bytes.count, bytes[position] >= 0x20, bytes[position] != UInt8(ascii: "\""),
                bytes[position] != UInt8(ascii: "\\")
            {
                position += 1
            }
            text.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<position]))
            guard position < bytes.count else { break }
            let byte = bytes[position]
            position += 1
            switch byte {
            case UInt8(ascii: "\""):
                return validatesUTF8 ? (String(validating: text, as: UTF8.self) ?? fail()) : String(decoding: text, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard position < bytes.count else { return fail() }
                let escape = bytes[position]
                position += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(escape)
                case UInt8(ascii: "b"): text.append(0x08)
                case UInt8(ascii: "f"): text.append(0x0C)
                case UInt8(ascii: "n"): text.append(0x0A)
                case UInt8(ascii: "r"): text.append(0x0D)
                case UInt8(ascii: "t"): text.append(0x09)
                case UInt8(ascii: "u"):
                    guard var scalar = hex4() else { return nil }
                    if (0xD800..<0xDC00).contains(scalar) {
                        // A surrogate pair: the low half must follow.
                        guard literal("\\u"), let low = hex4(), (0xDC00..<0xE000).contains(low) else { return fail() }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { return fail() }
                    text.append(contentsOf: String(Character(unicode)).utf8)
                default:
                    return fail()
                }
            case 0..<0x20:
                return fail()
            default:
                text.append(byte)
            }
        }
        return fail()
    }

    private mutating func hex4() -> UInt32? {
        guard bytes.count - position >= 4 else { return fail() }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[position]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: return fail()
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    private mutating func literal(_ word: StaticString) -> Bool {
        let count = word.utf8CodeUnitCount
        guard bytes.count - position >= count else { return fail() ?? false }
        for offset in 0..<count where bytes[position + offset] != word.utf8Start[offset] {
            return fail() ?? false
        }
        position += count
        return true
    }

    /// Consumes `byte` (after whitespace) if it is next.
    private mutating func peek(_ byte: UInt8) -> Bool {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == byte else { return false }
        position += 1
        return true
    }

    private mutating func expect(_ byte: UInt8) -> Bool {
        peek(byte) ? true : (fail() ?? false)
    }

    private mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): position += 1
            default: return
            }
        }
    }

    private mutating func fail<T>() -> T? {
        failed = true
        return nil
    }
}
