import Foundation

/// What a benchmark message carries: when it was sent and its sequence number, then padding.
///
/// 16 bytes, big endian: wall-clock nanoseconds at send, then the sequence number (per target:
/// per terminal for unicast, per topic for fan-out). Sender and receivers run on one machine,
/// so the wall clock is shared.
public struct BenchPayload: Equatable, Sendable {
    public static let headerSize = 16

    public var sentAtNanos: UInt64
    public var sequence: UInt64

    public init(sentAtNanos: UInt64, sequence: UInt64) {
        self.sentAtNanos = sentAtNanos
        self.sequence = sequence
    }

    /// The payload bytes, padded with `x` to `size` (at least the header).
    public func encoded(size: Int = headerSize) -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(max(size, Self.headerSize))
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: sentAtNanos >> UInt64(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: sequence >> UInt64(shift))) }
        while bytes.count < size { bytes.append(UInt8(ascii: "x")) }
        return bytes
    }

    /// Reads the header; nil when the payload is shorter than it.
    public init?<Bytes: Collection>(decoding bytes: Bytes) where Bytes.Element == UInt8 {
        guard bytes.count >= Self.headerSize else { return nil }
        var sentAt: UInt64 = 0
        var sequence: UInt64 = 0
        for (offset, byte) in bytes.prefix(Self.headerSize).enumerated() {
            if offset < 8 { sentAt = sentAt << 8 | UInt64(byte) } else { sequence = sequence << 8 | UInt64(byte) }
        }
        self.init(sentAtNanos: sentAt, sequence: sequence)
    }

    /// Wall-clock nanoseconds now.
    public static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }
}
