import FleetTestSupport
import MQTTCodec
import NIOCore
import Testing

/// The fuzzer's corpus and every input that once crashed it, through the check the fuzzer
/// runs (``MQTTCodecFuzzing/decoder(_:)``): every packet decoded encodes and decodes to itself.
@Suite struct FuzzCorpusTests {
    static func check(_ input: [UInt8]) -> [MQTTPacket] {
        let (packets, problems) = MQTTCodecFuzzing.decoder(input)
        #expect(problems.isEmpty)
        return packets
    }

    @Test func regressionInputsAreHandled() throws {
        let inputs = try FuzzInputs.read("regressions/mqtt-decoder")
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
        let inputs = try FuzzInputs.read("corpus/mqtt-decoder")
        #expect(inputs.count > 100, "the committed corpus")
        var decoded = 0
        for (_, input) in inputs { decoded += Self.check(input).count }
        #expect(decoded > 0)
    }
}
