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

/// Splits a byte stream into MQTT packets without holding a buffer while the stream is idle:
/// the bytes of an incomplete packet are kept only until it completes. Learns the protocol
/// version from the CONNECT it reads (server side). After an error nothing more is read.
public struct MQTTPacketReader: Sendable {
    public private(set) var version: MQTTProtocolVersion
    /// The largest packet accepted, fixed header included.
    public let maximumPacketSize: Int
    /// The start of a packet whose remaining bytes have not arrived yet.
    private var partial: ByteBuffer?
    /// A malformed packet was seen.
    public private(set) var failed = false

    public init(version: MQTTProtocolVersion = .v3_1_1, maximumPacketSize: Int) {
        self.version = version
        self.maximumPacketSize = maximumPacketSize
    }

    /// Reads the packets `bytes` completes, handing each to `body` in order; throws the first
    /// malformed packet's error (nothing is read after it).
    public mutating func read(_ bytes: ByteBuffer, _ body: (MQTTPacket) -> Void) throws {
        guard !failed else { return }
        var buffer = bytes
        if var earlier = partial.take() {
            earlier.writeBuffer(&buffer)
            buffer = earlier
        }
        do {
            while let packet = try MQTTPacket.read(from: &buffer, version: version, maximumPacketSize: maximumPacketSize) {
                if case .connect(let connect) = packet, connect.protocolVersion.isSupported {
                    version = connect.protocolVersion
                }
                body(packet)
            }
        } catch {
            failed = true
            throw error
        }
        if buffer.readableBytes > 0 { partial = buffer }
    }
}

extension MQTTPacket {
    /// The packet encoded for `version` into a buffer of its own from `allocator`.
    public func encoded(version: MQTTProtocolVersion, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        var buffer = allocator.buffer(capacity: encodedSizeHint)
        try write(to: &buffer, version: version)
        return buffer
    }
}

/// Decodes and encodes MQTT packets in one handler that holds no buffer while a connection
/// is idle (``MQTTPacketReader``), and each write encodes into a buffer of its own. NIO's
/// `ByteToMessageHandler` and `MessageToByteHandler` each keep buffers (and a pipeline
/// context) for the connection's lifetime: ~0.8 KiB per connection, at a million idle
/// terminals most of a gigabyte.
public final class MQTTCodecHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = MQTTPacket
    public typealias OutboundIn = MQTTPacket
    public typealias OutboundOut = ByteBuffer

    private var reader: MQTTPacketReader
    private let encoder: MQTTPacketEncoder

    /// - Parameter encoder: shared with the handler that learns the protocol version from
    ///   CONNECT (the reader learns it by itself).
    public init(maximumPacketSize: Int, encoder: MQTTPacketEncoder = MQTTPacketEncoder()) {
        self.reader = MQTTPacketReader(maximumPacketSize: maximumPacketSize)
        self.encoder = encoder
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try reader.read(unwrapInboundIn(data)) { packet in context.fireChannelRead(wrapInboundOut(packet)) }
        } catch {
            context.fireErrorCaught(error)
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        do {
            let buffer = try unwrapOutboundIn(data).encoded(version: encoder.version, allocator: context.channel.allocator)
            context.write(wrapOutboundOut(buffer), promise: promise)
        } catch {
            promise?.fail(error)
            context.fireErrorCaught(error)
        }
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
