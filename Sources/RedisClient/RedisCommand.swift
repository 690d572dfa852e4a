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

    /// Appends the RESP encoding, produced by hiredis's `redisFormatCommandArgv`.
    func encode(into buffer: inout ByteBuffer) {
        let count = ends.count
        bytes.withUnsafeBufferPointer { base in
            let start = UnsafeRawPointer(base.baseAddress!).assumingMemoryBound(to: CChar.self)
            withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: count) { argv in
                withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { lengths in
                    var previous = 0
                    for (index, end) in ends.enumerated() {
                        argv[index] = start + previous
                        lengths[index] = end - previous
                        previous = end
                    }
                    var target: UnsafeMutablePointer<CChar>?
                    let length = redisFormatCommandArgv(&target, Int32(count), argv.baseAddress, lengths.baseAddress)
                    if let target, length > 0 {
                        buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(length)))
                    }
                    redisFreeCommand(target)
                }
            }
        }
    }
}
