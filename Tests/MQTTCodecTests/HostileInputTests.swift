import MQTTCodec
import NIOCore
import NIOEmbedded
import Testing

struct HostileInputTests {
    func decodeError(_ bytes: String, version: MQTTProtocolVersion = .v3_1_1, maximumPacketSize: Int = 1 << 20) -> MQTTCodecError? {
        var buffer = hex(bytes)
        do {
            _ = try MQTTPacket.read(from: &buffer, version: version, maximumPacketSize: maximumPacketSize)
            return nil
        } catch let error as MQTTCodecError {
            return error
        } catch {
            return nil
        }
    }

    @Test func fiveByteRemainingLength() {
        #expect(decodeError("30 FF FF FF FF 7F")?.code == .malformedRemainingLength)
    }

    @Test func packetOneByteOverTheCapIsRefusedBeforeItArrives() {
        // 2 bytes of fixed header + 99 byte body = 101 > 100; only the header has arrived.
        #expect(decodeError("30 63", maximumPacketSize: 100)?.code == .packetTooLarge)
        // Exactly at the cap: just waits for more bytes.
        #expect(decodeError("30 62", maximumPacketSize: 100) == nil)
    }

    @Test func reservedFlagBits() {
        #expect(decodeError("80 06 00 01 00 01 'a' 00")?.code == .invalidFlags)  // SUBSCRIBE flags 0
        #expect(decodeError("36 05 00 01 'a' 00 01")?.code == .invalidFlags)  // PUBLISH QoS 3
        #expect(decodeError("41 02 00 01")?.code == .invalidFlags)  // PUBACK flags 1
        #expect(decodeError("C1 00")?.code == .invalidFlags)  // PINGREQ flags 1
        #expect(decodeError("10 0C 00 04 'MQTT' 04 03 00 3C 00 00")?.code == .protocolViolation)  // CONNECT reserved bit
    }

    @Test func badUTF8() {
        #expect(decodeError("30 04 00 02 FF FE")?.code == .invalidUTF8)
        #expect(decodeError("30 05 00 03 'a' 00 'b'")?.code == .invalidUTF8)  // U+0000
        #expect(decodeError("30 05 00 03 ED A0 80")?.code == .invalidUTF8)  // UTF-16 surrogate
    }

    @Test func zeroLengthTopic() {
        #expect(decodeError("30 02 00 00")?.code == .protocolViolation)
        #expect(decodeError("30 03 00 00 00", version: .v5)?.code == .protocolViolation)
    }

    @Test func otherViolations() {
        #expect(decodeError("00 00")?.code == .invalidPacketType)
        #expect(decodeError("F0 00")?.code == .invalidPacketType)  // AUTH in 3.1.1
        #expect(decodeError("32 05 00 01 'a' 00 00")?.code == .protocolViolation)  // packet id 0
        #expect(decodeError("30 04 00 02 'a+'")?.code == .protocolViolation)  // wildcard in topic name
        #expect(decodeError("82 02 00 01")?.code == .protocolViolation)  // SUBSCRIBE without filters
        #expect(decodeError("82 06 00 01 00 01 'a' 04")?.code == .protocolViolation)  // reserved option bits in 3.1.1
        #expect(decodeError("40 03 00 01 00")?.code == .malformedPacket)  // trailing byte in 3.1.1 PUBACK
        #expect(decodeError("10 0C 00 04 'HTTP' 04 02 00 3C 00 00")?.code == .protocolViolation)
        #expect(decodeError("32 05 00 01 'a' 00 01", version: .v5)?.code == .malformedPacket)  // properties missing
        #expect(decodeError("30 06 00 01 'a' 02 7F 00", version: .v5)?.code == .malformedPacket)  // unknown property
    }

    @Test func decodeErrorsKeepTheOffendingBytes() {
        let error = decodeError("30 04 00 02 FF FE")
        #expect(error?.bytes == [0xFF, 0xFE])
    }

    @Test func garbageOnAChannelFailsThatChannelOnly() throws {
        let bad = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder()))
        let good = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder()))
        #expect(throws: MQTTCodecError.self) { try bad.writeInbound(hex("47 45 54 20 2F 20 48 54 54 50")) }
        try good.writeInbound(hex("C0 00"))
        #expect(try good.readInbound(as: MQTTPacket.self) == .pingReq)
        #expect(try good.finish().isClean)
        _ = try? bad.finish()
    }
}
