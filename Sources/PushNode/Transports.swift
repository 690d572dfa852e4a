import MQTTCodec
import NIOCore
import NIOHTTP1
import NIOSSL
import NIOWebSocket

/// A listener terminals reach a push node on.
public struct MQTTListener: Sendable, Hashable, CustomStringConvertible {
    public enum Transport: String, Sendable, Hashable {
        /// MQTT over TCP.
        case tcp
        /// MQTT over TLS.
        case tls
        /// MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`).
        case webSocket = "ws"
        /// MQTT over WebSocket over TLS.
        case secureWebSocket = "wss"

        var usesTLS: Bool { self == .tls || self == .secureWebSocket }
        var usesWebSocket: Bool { self == .webSocket || self == .secureWebSocket }
    }

    public var transport: Transport
    public var host: String
    public var port: Int

    public init(_ transport: Transport, host: String, port: Int) {
        self.transport = transport
        self.host = host
        self.port = port
    }

    public var description: String { "\(transport.rawValue)://\(host):\(port)" }
}

extension Channel {
    /// Sets up a terminal connection's pipeline for its transport, ending in the MQTT codec and
    /// a connection handler. Must run on the channel's event loop.
    func configureMQTTPipeline(transport: MQTTListener.Transport, tls: NIOSSLContext?, node: PushNodeContext) throws {
        let pipeline = self.pipeline.syncOperations
        let proxied = try pipeline.addProxyProtocolHandler(node: node)
        if transport.usesTLS {
            guard let tls else { throw ChannelError.operationUnsupported }
            try pipeline.addHandler(NIOSSLServerHandler(context: tls))
        }
        guard transport.usesWebSocket else { return try pipeline.addMQTTHandlers(node: node, proxied: proxied) }
        // Until the upgrade, no MQTT handler watches the time: this one does.
        let deadline = HandshakeDeadlineHandler(timeout: .seconds(Int64(node.configuration.connectTimeout)))
        try pipeline.addHandler(deadline)
        let handshake = NIOLoopBound(deadline, eventLoop: eventLoop)
        let maximumFrameSize = node.configuration.maximumPacketSize + 16
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: maximumFrameSize,
            automaticErrorHandling: true,
            shouldUpgrade: { channel, head in
                // Only /mqtt, and only for a client that speaks MQTT (it must offer the "mqtt" subprotocol).
                let offered = head.headers[canonicalForm: "Sec-WebSocket-Protocol"].map { $0.lowercased() }
                guard head.uri.split(separator: "?").first == "/mqtt", offered.contains("mqtt") else {
                    return channel.eventLoop.makeSucceededFuture(nil)
                }
                return channel.eventLoop.makeSucceededFuture(HTTPHeaders([("Sec-WebSocket-Protocol", "mqtt")]))
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    pipeline.removeHandler(handshake.value, promise: nil)
                    try pipeline.addHandler(WebSocketMQTTFrameHandler())
                    try pipeline.addMQTTHandlers(node: node, proxied: proxied)
                }
            }
        )
        let refusal = WebSocketRefusalHandler()
        let upgraded = NIOLoopBound(refusal, eventLoop: eventLoop)
        try pipeline.configureHTTPServerPipeline(
            withServerUpgrade: (
                upgraders: [upgrader],
                completionHandler: { context in
                    context.pipeline.syncOperations.removeHandler(upgraded.value, promise: nil)
                }
            )
        )
        try pipeline.addHandler(refusal)
    }
}

extension Channel {
    /// A connection beyond the node's limit: MQTT over TCP or TLS gets a refusing CONNACK
    /// (``BusyRefusalHandler``); a WebSocket one, which would have to be upgraded first, is
    /// closed.
    func configureBusyRefusal(transport: MQTTListener.Transport, tls: NIOSSLContext?, node: PushNodeContext) throws {
        guard !transport.usesWebSocket else { return close(promise: nil) }
        let pipeline = self.pipeline.syncOperations
        _ = try pipeline.addProxyProtocolHandler(node: node)
        if transport.usesTLS {
            guard let tls else { throw ChannelError.operationUnsupported }
            try pipeline.addHandler(NIOSSLServerHandler(context: tls))
        }
        let encoder = MQTTPacketEncoder()
        try pipeline.addHandlers([
            MQTTCodecHandler(maximumPacketSize: 4096, encoder: encoder),
            BusyRefusalHandler(encoder: encoder, timeout: .seconds(Int64(node.configuration.connectTimeout))),
        ])
    }
}

extension ChannelPipeline.SynchronousOperations {
    func addMQTTHandlers(node: PushNodeContext, proxied: ProxiedPeer?) throws {
        try addHandler(MQTTConnectionHandler(node: node, proxied: proxied))
    }

    /// Under `--proxy-protocol`, the handler that reads the PROXY header first; returns where
    /// it leaves the client's address (nil without `--proxy-protocol`).
    func addProxyProtocolHandler(node: PushNodeContext) throws -> ProxiedPeer? {
        guard node.configuration.proxyProtocol else { return nil }
        let peer = ProxiedPeer()
        let logger = node.logger
        try addHandler(
            ProxyProtocolHandler(peer: peer) { failure, address in
                logger.info(
                    "connection without a valid PROXY header closed",
                    metadata: ["error": "\(failure)", "from": "\(address.map { "\($0)" } ?? "?")"])
            })
        return peer
    }
}

/// WebSocket binary frames in, MQTT bytes out, and back (MQTT 5 section 6: one or more MQTT
/// packets per frame, a packet may span frames). Text frames are a protocol error.
final class WebSocketMQTTFrameHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private var closing = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .continuation:
            context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            close(context: context, code: .normalClosure)
        case .text:
            close(context: context, code: .unacceptableData)
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = WebSocketFrame(fin: true, opcode: .binary, data: unwrapOutboundIn(data))
        context.write(wrapOutboundOut(frame), promise: promise)
    }

    private func close(context: ChannelHandlerContext, code: WebSocketErrorCode) {
        guard !closing else { return }
        closing = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: code)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Answers an HTTP request that did not upgrade to MQTT over WebSocket: 404 off `/mqtt`,
/// 400 otherwise, then closes.
final class WebSocketRefusalHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let status: HTTPResponseStatus = head.uri.split(separator: "?").first == "/mqtt" ? .badRequest : .notFound
        let body = status == .notFound ? "MQTT over WebSocket is at /mqtt\n" : "expected a WebSocket upgrade with subprotocol mqtt\n"
        var headers = HTTPHeaders([("Content-Type", "text/plain"), ("Connection", "close")])
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
