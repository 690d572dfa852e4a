import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore

/// Connections a node holds at most (``PushNodeConfiguration/maximumConnections``): a slot is
/// taken when a connection is accepted and given back when it closes.
final class ConnectionSlots: Sendable {
    private let held = NIOLockedValueBox(0)
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// Takes a slot; false when all are taken.
    func take() -> Bool {
        held.withLockedValue { held in
            guard held < limit else { return false }
            held += 1
            return true
        }
    }

    func release() {
        held.withLockedValue { $0 -= 1 }
    }
}

/// Closes a connection that has not finished its handshake (WebSocket upgrade) within a
/// deadline; removed once the handshake is done, when the MQTT handler's own CONNECT deadline
/// takes over.
final class HandshakeDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }
}

/// Answers a connection beyond the node's limit: its CONNECT gets a refusing CONNACK (MQTT
/// 3.1.1: 0x03 server unavailable; 5.0: 0x89 server busy), then the connection closes; one
/// that sends nothing is closed at the CONNECT deadline.
final class BusyRefusalHandler: ChannelInboundHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    private let encoder: MQTTPacketEncoder
    private let timeout: TimeAmount

    init(encoder: MQTTPacketEncoder, timeout: TimeAmount) {
        self.encoder = encoder
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .connect(let connect) = unwrapInboundIn(data) else { return context.close(promise: nil) }
        let v5 = connect.protocolVersion.hasProperties
        if connect.protocolVersion.isSupported { encoder.version = connect.protocolVersion }
        let ack = MQTTConnAckPacket(sessionPresent: false, reasonCode: v5 ? .serverBusy : .v3ServerUnavailable)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.connAck(ack))).whenComplete { _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
