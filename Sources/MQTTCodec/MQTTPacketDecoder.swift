import NIOCore

/// Frames and decodes MQTT packets from a byte stream.
///
/// The decoder learns the protocol version from the CONNECT it decodes (server side) or is
/// told it up front (client side). Any error is the peer's fault and ends the stream.
public struct MQTTPacketDecoder: ByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket

    /// The protocol version used to decode packets after CONNECT.
    public var version: MQTTProtocolVersion
    /// The largest packet accepted, fixed header included.
    public var maximumPacketSize: Int

    public init(version: MQTTProtocolVersion = .v3_1_1, maximumPacketSize: Int = 1 << 20) {
        self.version = version
        self.maximumPacketSize = maximumPacketSize
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let packet = try MQTTPacket.read(from: &buffer, version: version, maximumPacketSize: maximumPacketSize) else {
            return .needMoreData
        }
        if case .connect(let connect) = packet, connect.protocolVersion.isSupported {
            version = connect.protocolVersion
        }
        context.fireChannelRead(wrapInboundOut(packet))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Encodes MQTT packets for a channel; `version` can be changed once CONNECT has been seen.
public final class MQTTPacketEncoder: MessageToByteEncoder {
    public typealias OutboundIn = MQTTPacket

    public var version: MQTTProtocolVersion

    public init(version: MQTTProtocolVersion = .v3_1_1) {
        self.version = version
    }

    public func encode(data: MQTTPacket, out: inout ByteBuffer) throws {
        try data.write(to: &out, version: version)
    }
}
