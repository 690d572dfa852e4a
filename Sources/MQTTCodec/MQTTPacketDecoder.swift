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

/// Decodes and encodes MQTT packets in one handler that holds no buffer while a connection
/// is idle: bytes of an incomplete packet are kept only until it completes, and each write
/// encodes into a buffer of its own. NIO's `ByteToMessageHandler` and `MessageToByteHandler`
/// each keep buffers (and a pipeline context) for the connection's lifetime: ~0.8 KiB per
/// connection, at a million idle terminals most of a gigabyte.
public final class MQTTCodecHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = MQTTPacket
    public typealias OutboundIn = MQTTPacket
    public typealias OutboundOut = ByteBuffer

    private var decoder: MQTTPacketDecoder
    private let encoder: MQTTPacketEncoder
    /// The start of a packet whose remaining bytes have not arrived yet.
    private var partial: ByteBuffer?
    /// A malformed packet was seen: nothing after it is decoded.
    private var failed = false

    /// - Parameter encoder: shared with the handler that learns the protocol version from
    ///   CONNECT (the decoder learns it by itself).
    public init(maximumPacketSize: Int, encoder: MQTTPacketEncoder = MQTTPacketEncoder()) {
        self.decoder = MQTTPacketDecoder(maximumPacketSize: maximumPacketSize)
        self.encoder = encoder
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var buffer = unwrapInboundIn(data)
        if var earlier = partial.take() {
            earlier.writeBuffer(&buffer)
            buffer = earlier
        }
        do {
            while let packet = try MQTTPacket.read(from: &buffer, version: decoder.version, maximumPacketSize: decoder.maximumPacketSize) {
                if case .connect(let connect) = packet, connect.protocolVersion.isSupported {
                    decoder.version = connect.protocolVersion
                }
                context.fireChannelRead(wrapInboundOut(packet))
            }
        } catch {
            failed = true
            context.fireErrorCaught(error)
            return
        }
        if buffer.readableBytes > 0 { partial = buffer }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let packet = unwrapOutboundIn(data)
        var buffer = context.channel.allocator.buffer(capacity: packet.encodedSizeHint)
        do {
            try packet.write(to: &buffer, version: encoder.version)
        } catch {
            promise?.fail(error)
            context.fireErrorCaught(error)
            return
        }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }
}

extension MQTTPacket {
    /// A starting capacity for the encoded packet: exact enough that a PUBLISH is not copied
    /// while it is written.
    var encodedSizeHint: Int {
        switch self {
        case .publish(let publish):
            return 16 + publish.topicName.utf8.count + publish.payload.readableBytes + 48 * publish.properties.properties.count
        case .connAck, .subAck, .pubAck, .pubRec, .pubRel, .pubComp, .pingResp, .unsubAck, .disconnect:
            return 32
        default:
            return 128
        }
    }
}

extension Optional {
    fileprivate mutating func take() -> Wrapped? {
        defer { self = nil }
        return self
    }
}
