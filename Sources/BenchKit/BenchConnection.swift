import MQTTCodec
import NIOCore

/// How one benchmark connection logs in and what it subscribes to.
public struct BenchLogin: Sendable {
    public var clientID: String
    public var username: String?
    public var password: String?
    /// Topic filters subscribed after CONNACK (none for publishers and for PushFleet terminals,
    /// which have `push/<id>` and `broadcast` already).
    public var subscriptions: [String]
    public var qos: MQTTQoS
    public var keepAlive: UInt16 = 300
    /// Clean session; off keeps the session (and what is queued for it) across connections.
    public var cleanStart = true

    public init(
        clientID: String, username: String? = nil, password: String? = nil, subscriptions: [String] = [], qos: MQTTQoS = .atLeastOnce
    ) {
        self.clientID = clientID
        self.username = username
        self.password = password
        self.subscriptions = subscriptions
        self.qos = qos
    }
}

/// A benchmark MQTT 3.1.1 client connection: logs in, subscribes, counts what it receives
/// (acknowledging at its QoS) and publishes with a bounded in-flight window.
final class BenchConnection: ChannelInboundHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    private let login: BenchLogin
    private let stats: BenchStats
    /// Called once, on the channel's loop, when the connection is ready (CONNACK, SUBACK).
    private let onReady: (Bool) -> Void
    private var ready = false
    private var tracker = SequenceTracker()
    private var context: ChannelHandlerContext?

    // Publishing.
    private var nextPacketID: UInt16 = 1
    private(set) var inflight = 0
    var window = 64
    /// Called when an acknowledgement frees room in the window.
    var onRoom: (() -> Void)?

    init(login: BenchLogin, stats: BenchStats, onReady: @escaping (Bool) -> Void) {
        self.login = login
        self.stats = stats
        self.onReady = onReady
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// The context holds this handler: let go of it, or both outlive the connection.
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelActive(context: ChannelHandlerContext) {
        let connect = MQTTConnectPacket(
            clientIdentifier: login.clientID, cleanStart: login.cleanStart, keepAlive: login.keepAlive, username: login.username,
            password: login.password.map { Array($0.utf8) })
        context.writeAndFlush(wrapOutboundOut(.connect(connect)), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !ready { finish(false) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .connAck(let ack):
            guard ack.reasonCode == .success else {
                finish(false)
                return context.close(promise: nil)
            }
            if login.subscriptions.isEmpty { return finish(true) }
            let subscribe = MQTTSubscribePacket(
                packetIdentifier: takePacketID(),
                subscriptions: login.subscriptions.map { .init(topicFilter: $0, options: .init(qos: login.qos)) })
            context.writeAndFlush(wrapOutboundOut(.subscribe(subscribe)), promise: nil)
        case .subAck:
            finish(true)
        case .publish(let publish):
            let payload = BenchPayload(decoding: publish.payload.readableBytesView)
            let latency = payload.map { BenchPayload.now() &- $0.sentAtNanos }
            let duplicate = payload.map { tracker.isDuplicate($0.sequence) } ?? false
            stats.received(latencyNanos: latency, duplicate: duplicate)
            if let id = publish.packetIdentifier {
                let ack = MQTTAckPacket(packetIdentifier: id)
                context.writeAndFlush(wrapOutboundOut(publish.qos == .exactlyOnce ? .pubRec(ack) : .pubAck(ack)), promise: nil)
            }
        case .pubRel(let ack):
            context.writeAndFlush(wrapOutboundOut(.pubComp(MQTTAckPacket(packetIdentifier: ack.packetIdentifier))), promise: nil)
        case .pubAck, .pubComp:
            inflight -= 1
            onRoom?()
        case .pubRec(let ack):
            context.writeAndFlush(wrapOutboundOut(.pubRel(MQTTAckPacket(packetIdentifier: ack.packetIdentifier))), promise: nil)
        default:
            break
        }
    }

    private func finish(_ success: Bool) {
        guard !ready else { return }
        ready = true
        if success { stats.connected() } else { stats.failed() }
        onReady(success)
    }

    private func takePacketID() -> UInt16 {
        let id = nextPacketID
        nextPacketID = nextPacketID == .max ? 1 : nextPacketID + 1
        return id
    }

    /// Whether a QoS 1/2 publish fits the window now (QoS 0: whether the socket takes more).
    func canPublish(qos: MQTTQoS) -> Bool {
        guard let context, context.channel.isActive else { return false }
        return qos == .atMostOnce ? context.channel.isWritable : inflight < window
    }

    /// Writes a PUBLISH (flushed by the caller's `flush()`).
    func publish(topic: String, payload: [UInt8], qos: MQTTQoS) {
        guard let context else { return }
        var buffer = context.channel.allocator.buffer(capacity: payload.count)
        buffer.writeBytes(payload)
        var packetID: UInt16?
        if qos != .atMostOnce {
            packetID = takePacketID()
            inflight += 1
        }
        let publish = MQTTPublishPacket(topicName: topic, payload: buffer, qos: qos, packetIdentifier: packetID)
        context.write(wrapOutboundOut(.publish(publish)), promise: nil)
        stats.sent()
    }

    func flush() { context?.flush() }
}
