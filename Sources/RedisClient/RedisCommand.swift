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

    /// A command that may wait on the server for something to happen (a blocking stream or
    /// list read): its time says nothing about Redis's latency. Read without making a String.
    var mayBlock: Bool {
        let name = argument(0)
        guard name.count >= 5, let first = name.first, first | 0x20 == UInt8(ascii: "x") || first | 0x20 == UInt8(ascii: "b") else {
            return false
        }
        let upper = String(decoding: name, as: UTF8.self).uppercased()
        return ["XREAD", "XREADGROUP", "BLPOP", "BRPOP", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP"].contains(upper)
    }

    /// The number of arguments, the command name included.
    var argumentCount: Int { ends.count }

    /// The `index`th argument (0: the name), without copying it.
    func argument(_ index: Int) -> ArraySlice<UInt8> {
        bytes[(index == 0 ? 0 : ends[index - 1])..<ends[index]]
    }

    /// Appends the RESP encoding (`*<count>`, then `$<length>` and the bytes of each
    /// argument), written straight into `buffer`: the same bytes as hiredis's
    /// `redisFormatCommandArgv` (a test checks them against it) without its allocation and
    /// `sprintf` per argument.
    func encode(into buffer: inout ByteBuffer) {
        // At most 20 digits per decimal, plus its prefix byte and CRLF, and a CRLF per argument.
        let bound = bytes.count + 23 * (ends.count + 1) + 2 * ends.count
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { target in
            var out = target.baseAddress!
            out = Self.write(UInt8(ascii: "*"), ends.count, at: out)
            bytes.withUnsafeBufferPointer { base in
                var previous = 0
                for end in ends {
                    out = Self.write(UInt8(ascii: "$"), end - previous, at: out)
                    let length = end - previous
                    if length > 0 {
                        out.copyMemory(from: base.baseAddress! + previous, byteCount: length)
                        out += length
                    }
                    out.storeBytes(of: UInt8(ascii: "\r"), as: UInt8.self)
                    (out + 1).storeBytes(of: UInt8(ascii: "\n"), as: UInt8.self)
                    out += 2
                    previous = end
                }
            }
            return out - target.baseAddress!
        }
    }

    /// `prefix`, `value` in decimal, then CRLF, written at `out`; returns where it ended.
    private static func write(_ prefix: UInt8, _ value: Int, at out: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        out.storeBytes(of: prefix, as: UInt8.self)
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        rest = value
        for offset in stride(from: digits, to: 0, by: -1) {
            (out + offset).storeBytes(of: UInt8(ascii: "0") + UInt8(rest % 10), as: UInt8.self)
            rest /= 10
        }
        (out + digits + 1).storeBytes(of: UInt8(ascii: "\r"), as: UInt8.self)
        (out + digits + 2).storeBytes(of: UInt8(ascii: "\n"), as: UInt8.self)
        return out + digits + 3
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
