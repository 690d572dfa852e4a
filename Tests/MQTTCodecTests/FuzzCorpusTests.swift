import Foundation
import MQTTCodec
import NIOCore
import Testing

/// The fuzzer's corpus and every input that once crashed it, run through the same check as
/// `Fuzz/Sources/MQTTDecoderFuzzer` (no fuzzer needed): the first byte picks the version, the
/// rest is a peer's byte stream; every packet decoded must encode and decode to itself.
@Suite struct FuzzCorpusTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz")

    static func inputs(_ folder: String) throws -> [(String, [UInt8])] {
        let directory = root.appendingPathComponent(folder)
        return try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted().map { name in
            (name, Array(try Data(contentsOf: directory.appendingPathComponent(name))))
        }
    }

    /// Decodes `input` as the fuzz target does; returns the packets it decoded.
    static func check(_ input: [UInt8]) -> [MQTTPacket] {
        guard let first = input.first else { return [] }
        let version: MQTTProtocolVersion = first & 1 == 0 ? .v3_1_1 : .v5
        var buffer = ByteBuffer(bytes: input.dropFirst())
        var packets: [MQTTPacket] = []
        while let packet = try? MQTTPacket.read(from: &buffer, version: version, maximumPacketSize: 1 << 20) {
            packets.append(packet)
            var encoded = ByteBuffer()
            guard (try? packet.write(to: &encoded, version: version)) != nil else { continue }
            let again = try? MQTTPacket.read(from: &encoded, version: version, maximumPacketSize: 1 << 21)
            #expect(again == packet, "round trip of \(packet)")
        }
        return packets
    }

    @Test func regressionInputsAreHandled() throws {
        let inputs = try Self.inputs("regressions/mqtt-decoder")
        #expect(!inputs.isEmpty)
        for (_, input) in inputs { _ = Self.check(input) }
    }

    @Test func aThreeOneOneUnsubackWithReasonCodesIsMalformed() throws {
        // Found by the fuzzer: decoded with reason codes 3.1.1 does not have, it encoded differently.
        var buffer = ByteBuffer(bytes: [0xB0, 0x06, 0, 0, 0, 0, 0, 0])
        #expect(throws: MQTTCodecError.self) { try MQTTPacket.read(from: &buffer, version: .v3_1_1) }
        var valid = ByteBuffer(bytes: [0xB0, 0x02, 0x00, 0x07])
        #expect(try MQTTPacket.read(from: &valid, version: .v3_1_1) == .unsubAck(MQTTSubAckPacket(packetIdentifier: 7, reasonCodes: [])))
    }

    @Test func theCorpusRoundTrips() throws {
        let inputs = try Self.inputs("corpus/mqtt-decoder")
        #expect(inputs.count > 100, "the committed corpus")
        var decoded = 0
        for (_, input) in inputs { decoded += Self.check(input).count }
        #expect(decoded > 0)
    }
}
