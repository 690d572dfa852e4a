import NIOCore

/// Entry point for coverage-guided fuzzing (`Fuzz/`, `scripts/fuzz`) and the tests that replay
/// its corpus. Not for other use.
public enum MQTTCodecFuzzing {
    /// The first byte picks the protocol version, the rest is a byte stream from a peer. Every
    /// packet the decoder accepts must encode again and decode to the same packet; anything
    /// else it does with hostile bytes must be a thrown error or "need more bytes". Returns
    /// the packets decoded and the ways the contract broke.
    public static func decoder(_ input: [UInt8]) -> (packets: [MQTTPacket], problems: [String]) {
        guard let first = input.first else { return ([], []) }
        let version: MQTTProtocolVersion = first & 1 == 0 ? .v3_1_1 : .v5
        var buffer = ByteBuffer(bytes: input.dropFirst())
        var packets: [MQTTPacket] = []
        var problems: [String] = []
        while let packet = try? MQTTPacket.read(from: &buffer, version: version, maximumPacketSize: 1 << 20) {
            packets.append(packet)
            var encoded = ByteBuffer()
            guard (try? packet.write(to: &encoded, version: version)) != nil else { continue }
            let again = try? MQTTPacket.read(from: &encoded, version: version, maximumPacketSize: 1 << 21)
            if again != packet { problems.append("round trip changed \(packet) into \(String(describing: again))") }
        }
        return (packets, problems)
    }
}
