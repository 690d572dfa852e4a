import MQTTCodec
import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing

struct ChannelTests {
    static let packets: [MQTTPacket] = [
        .connect(
            MQTTConnectPacket(clientIdentifier: "t1", cleanStart: false, keepAlive: 30, username: "t1", password: Array("secret".utf8))),
        .subscribe(
            MQTTSubscribePacket(packetIdentifier: 1, subscriptions: [.init(topicFilter: "push/t1", options: .init(qos: .atLeastOnce))])),
        .publish(
            MQTTPublishPacket(
                topicName: "push/t1", payload: ByteBuffer(string: String(repeating: "x", count: 300)), qos: .atLeastOnce,
                packetIdentifier: 9)),
        .pubAck(MQTTAckPacket(packetIdentifier: 9)),
        .pingReq,
        .disconnect(MQTTDisconnectPacket()),
    ]

    @Test func embeddedChannelRoundTrip() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(MQTTPacketDecoder()), MessageToByteHandler(MQTTPacketEncoder()),
        ])
        for packet in Self.packets {
            try channel.writeOutbound(packet)
            let bytes = try #require(try channel.readOutbound(as: ByteBuffer.self))
            try channel.writeInbound(bytes)
            #expect(try channel.readInbound(as: MQTTPacket.self) == packet)
        }
        #expect(try channel.finish().isClean)
    }

    @Test func decoderLearnsVersion5FromConnect() throws {
        let connect = MQTTPacket.connect(MQTTConnectPacket(protocolVersion: .v5, clientIdentifier: "t5"))
        let publish = MQTTPacket.publish(
            MQTTPublishPacket(
                topicName: "a", payload: ByteBuffer(string: "p"), qos: .atLeastOnce, packetIdentifier: 3,
                properties: [.init(.contentType, .string("text/plain"))])
        )
        var bytes = ByteBuffer()
        try connect.write(to: &bytes, version: .v5)
        try publish.write(to: &bytes, version: .v5)
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(MQTTPacketDecoder()))
        try channel.writeInbound(bytes)
        #expect(try channel.readInbound(as: MQTTPacket.self) == connect)
        #expect(try channel.readInbound(as: MQTTPacket.self) == publish)
        #expect(try channel.finish().isClean)
    }

    @Test func chunkingInvariance() throws {
        var pairs: [(ByteBuffer, [MQTTPacket])] = []
        for packet in Self.packets {
            var buffer = ByteBuffer()
            try packet.write(to: &buffer, version: .v3_1_1)
            pairs.append((buffer, [packet]))
        }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { MQTTPacketDecoder() }
    }

    @Test func codecHandlerDecodesAnyChunkingAndEncodesWhatTheCodecWrites() throws {
        var stream = ByteBuffer()
        for packet in Self.packets { try packet.write(to: &stream, version: .v3_1_1) }
        // Whole, byte by byte, and in uneven pieces: the same packets come out.
        for chunk in [stream.readableBytes, 1, 7, 100] {
            let channel = EmbeddedChannel(handler: MQTTCodecHandler(maximumPacketSize: 1 << 20))
            var input = stream
            while input.readableBytes > 0 {
                try channel.writeInbound(input.readSlice(length: min(chunk, input.readableBytes))!)
            }
            var decoded: [MQTTPacket] = []
            while let packet = try channel.readInbound(as: MQTTPacket.self) { decoded.append(packet) }
            #expect(decoded == Self.packets, "chunks of \(chunk)")
            for packet in Self.packets {
                try channel.writeOutbound(packet)
                var expected = ByteBuffer()
                try packet.write(to: &expected, version: .v3_1_1)
                #expect(try channel.readOutbound(as: ByteBuffer.self) == expected)
            }
            #expect(try channel.finish().isClean)
        }
    }

    @Test func codecHandlerStopsAtAMalformedPacket() throws {
        let channel = EmbeddedChannel(handler: MQTTCodecHandler(maximumPacketSize: 64))
        var bytes = ByteBuffer()
        try MQTTPacket.pingReq.write(to: &bytes, version: .v3_1_1)
        bytes.writeBytes([0x00, 0x00])  // packet type 0 is reserved
        try MQTTPacket.pingReq.write(to: &bytes, version: .v3_1_1)
        #expect(throws: MQTTCodecError.self) { try channel.writeInbound(bytes) }
        #expect(try channel.readInbound(as: MQTTPacket.self) == .pingReq)
        #expect(try channel.readInbound(as: MQTTPacket.self) == nil)  // nothing after the bad one
        _ = try? channel.finish()
        // A packet over the maximum size fails before its body arrives.
        let small = EmbeddedChannel(handler: MQTTCodecHandler(maximumPacketSize: 64))
        #expect(throws: MQTTCodecError.self) { try small.writeInbound(ByteBuffer(bytes: [0x30, 0xC8, 0x01])) }
        _ = try? small.finish()
    }

    @Test func topicFilters() {
        #expect(MQTTTopic.isValidFilter("a/+/c"))
        #expect(MQTTTopic.isValidFilter("#"))
        #expect(!MQTTTopic.isValidFilter("a/#/c"))
        #expect(!MQTTTopic.isValidFilter("a+"))
        #expect(!MQTTTopic.isValidFilter(""))
        // No null character in a name or a filter [MQTT-4.7.3-2].
        #expect(!MQTTTopic.isValidFilter("a/\u{0}b") && !MQTTTopic.isValidTopicName("news/\u{0}") && MQTTTopic.isValidTopicName("news/x"))
        #expect(MQTTTopic.matches(filter: "a/+/c", topic: "a/b/c"))
        #expect(MQTTTopic.matches(filter: "a/#", topic: "a"))
        #expect(MQTTTopic.matches(filter: "a/#", topic: "a/b/c"))
        #expect(!MQTTTopic.matches(filter: "a/+", topic: "a/b/c"))
        #expect(!MQTTTopic.matches(filter: "#", topic: "$SYS/x"))
        #expect(MQTTTopic.matches(filter: "$SYS/#", topic: "$SYS/x"))
        #expect(!MQTTTopic.matches(filter: "+/x", topic: "$SYS/x"))
        #expect(MQTTTopic.matches(filter: "a//b", topic: "a//b") && !MQTTTopic.matches(filter: "a/+", topic: "a//b"))
    }

    @Test func filtersCoverFilters() {
        #expect(MQTTTopic.covers(pattern: "news/#", filter: "news/sport/+"))
        #expect(MQTTTopic.covers(pattern: "news/#", filter: "news/#"))
        #expect(MQTTTopic.covers(pattern: "news/+", filter: "news/+"))
        #expect(!MQTTTopic.covers(pattern: "news/+", filter: "news/#"))
        #expect(!MQTTTopic.covers(pattern: "news/#", filter: "#"))
        #expect(!MQTTTopic.covers(pattern: "+/a", filter: "$SYS/a"))
        #expect(!MQTTTopic.covers(pattern: "a/b", filter: "a/+"))
    }
}
