import CHiredis
import NIOCore

/// One Redis command: its arguments as binary-safe byte strings.
///
/// The arguments are kept back to back in one array (two allocations per command, not one per
/// argument): a push costs the control node a dozen commands, so this is on the hot path.
public struct RedisCommand: Sendable, Hashable {
    /// Every argument's bytes, back to back, then a 0 byte (so the storage is never empty).
    private var bytes: [UInt8]
    /// Where each argument ends in `bytes`.
    private var ends: [Int]

    public init(_ arguments: [[UInt8]]) {
        bytes = []
        bytes.reserveCapacity(arguments.reduce(1) { $0 + $1.count })
        ends = []
        ends.reserveCapacity(arguments.count)
        for argument in arguments {
            bytes.append(contentsOf: argument)
            ends.append(bytes.count)
        }
        bytes.append(0)
    }

    public init(_ name: String, _ arguments: [String]) {
        bytes = []
        bytes.reserveCapacity(arguments.reduce(name.utf8.count + 1) { $0 + $1.utf8.count })
        ends = []
        ends.reserveCapacity(arguments.count + 1)
        bytes.append(contentsOf: name.utf8)
        ends.append(bytes.count)
        for argument in arguments {
            bytes.append(contentsOf: argument.utf8)
            ends.append(bytes.count)
        }
        bytes.append(0)
    }

    public init(_ name: String, _ arguments: String...) {
        self.init(name, arguments)
    }

    /// The arguments, command name first.
    public var arguments: [[UInt8]] {
        var start = 0
        return ends.map { end in
            defer { start = end }
            return Array(bytes[start..<end])
        }
    }

    /// The command name, for logs.
    public var name: String { String(decoding: bytes[0..<(ends.first ?? 0)], as: UTF8.self) }

    /// Appends the RESP encoding (`*<count>`, then `$<length>` and the bytes of each
    /// argument), written straight into `buffer`: the same bytes as hiredis's
    /// `redisFormatCommandArgv` (a test checks them against it) without its allocation and
    /// `sprintf` per argument.
    func encode(into buffer: inout ByteBuffer) {
        buffer.reserveCapacity(minimumWritableBytes: bytes.count + 16 * (ends.count + 1))
        buffer.writeInteger(UInt8(ascii: "*"))
        Self.writeDecimal(ends.count, into: &buffer)
        bytes.withUnsafeBufferPointer { base in
            var previous = 0
            for end in ends {
                buffer.writeInteger(UInt8(ascii: "$"))
                Self.writeDecimal(end - previous, into: &buffer)
                buffer.writeBytes(UnsafeBufferPointer(rebasing: base[previous..<end]))
                buffer.writeStaticString("\r\n")
                previous = end
            }
        }
    }

    /// `value` in decimal, then CRLF.
    private static func writeDecimal(_ value: Int, into buffer: inout ByteBuffer) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
            UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { digits in
            var position = digits.count
            var rest = value
            repeat {
                position -= 1
                digits[position] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            } while rest > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: digits[position...]))
        }
        buffer.writeStaticString("\r\n")
    }

    /// hiredis's own encoding of the command (`redisFormatCommandArgv`), for tests.
    package func hiredisEncoding() -> [UInt8] {
        let count = ends.count
        return bytes.withUnsafeBufferPointer { base in
            let start = UnsafeRawPointer(base.baseAddress!).assumingMemoryBound(to: CChar.self)
            return withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: count) { argv in
                withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { lengths in
                    var previous = 0
                    for (index, end) in ends.enumerated() {
                        argv[index] = start + previous
                        lengths[index] = end - previous
                        previous = end
                    }
                    var target: UnsafeMutablePointer<CChar>?
                    let length = redisFormatCommandArgv(&target, Int32(count), argv.baseAddress, lengths.baseAddress)
                    defer { redisFreeCommand(target) }
                    guard let target, length > 0 else { return [] }
                    return Array(UnsafeRawBufferPointer(start: target, count: Int(length)))
                }
            }
        }
    }
}
