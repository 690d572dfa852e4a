import CHiredis
import NIOCore

/// One Redis command: its arguments as binary-safe byte strings.
public struct RedisCommand: Sendable, Hashable {
    public var arguments: [[UInt8]]

    public init(_ arguments: [[UInt8]]) {
        self.arguments = arguments
    }

    public init(_ name: String, _ arguments: [String]) {
        self.arguments = [Array(name.utf8)] + arguments.map { Array($0.utf8) }
    }

    public init(_ name: String, _ arguments: String...) {
        self.init(name, arguments)
    }

    /// The command name, for logs.
    public var name: String { arguments.first.map { String(decoding: $0, as: UTF8.self) } ?? "" }

    /// Appends the RESP encoding, produced by hiredis's `redisFormatCommandArgv`.
    func encode(into buffer: inout ByteBuffer) {
        var flat: [UInt8] = []
        flat.reserveCapacity(arguments.reduce(0) { $0 + $1.count } + 1)
        var offsets: [Int] = []
        var lengths: [Int] = []
        for argument in arguments {
            offsets.append(flat.count)
            lengths.append(argument.count)
            flat.append(contentsOf: argument)
        }
        flat.append(0)  // never empty, so baseAddress is non-nil
        flat.withUnsafeBufferPointer { base in
            let start = UnsafeRawPointer(base.baseAddress!).assumingMemoryBound(to: CChar.self)
            var argv: [UnsafePointer<CChar>?] = offsets.map { start + $0 }
            var target: UnsafeMutablePointer<CChar>?
            let length = redisFormatCommandArgv(&target, Int32(arguments.count), &argv, lengths)
            if let target, length > 0 {
                buffer.writeBytes(UnsafeRawBufferPointer(start: target, count: Int(length)))
            }
            redisFreeCommand(target)
        }
    }
}
