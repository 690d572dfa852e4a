import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// One terminal's MQTT connection: authentication, session registration, delivery and acks.
///
/// Lives on its channel's event loop. Redis replies are hopped back to that loop before they
/// touch any state. Stored messages are never popped: an entry leaves the terminal's Redis
/// list only when the terminal acknowledged it (QoS 1), it was written (QoS 0), or it expired.
///
/// This file holds the connection's state, its channel events and its end; the rules live in
/// extensions by responsibility: `+Session` (CONNECT, registration, takeover), `+Inbound`
/// (what the terminal sends), `+Subscriptions`, `+Delivery` (what goes to the terminal).
final class MQTTConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    enum Phase {
        case awaitingConnect
        case registering
        case active
        /// Node shutdown: no new deliveries; closes once in-flight messages are acknowledged.
        case draining
        /// Taken over or kicked: delivers and reads nothing more; the channel is closing.
        case stopped
        case closed
    }

    final class Will {
        let message: StoredMessage
        /// Seconds after the connection ends (MQTT 5 will delay interval).
        let delay: UInt32

        init(message: StoredMessage, delay: UInt32) {
            self.message = message
            self.delay = delay
        }
    }

    typealias Inflight = OutboundWindow.Inflight

    let node: PushNodeContext
    let encoder: MQTTPacketEncoder
    var context: ChannelHandlerContext?
    var phase = Phase.awaitingConnect
    /// The node's logger with this terminal's id; built when something is logged, so an idle
    /// connection does not carry a logger of its own.
    var logger: Logger {
        guard !terminal.isEmpty else { return node.logger }
        var logger = node.logger
        logger[metadataKey: "terminal"] = "\(terminal)"
        return logger
    }

    var version = MQTTProtocolVersion.v3_1_1
    var terminal = ""
    var epoch = ""
    var connectedAt: Int64 = 0
    var cleanStart = true
    var keepAlive: TimeAmount = .zero
    /// What the session needs of its CONNECT's properties (not the properties themselves: a
    /// client's user properties would stay in memory as long as the connection).
    var requestedSessionExpiry: UInt32?
    var requestsProblemInformation = true
    var lastReceived = NIODeadline.now()
    /// Where this connection is in its event loop's ``KeepAliveSweeper`` (-1: not in it).
    var sweepSlot = -1
    var connectDeadline: Scheduled<Void>?
    var handle: SessionHandle?

    /// Topic filter -> subscription, without the automatic ones (below).
    var subscriptions: [String: Subscription] = [:]
    /// The automatic `push/<id>` and `broadcast` subscriptions (QoS 1 unless the terminal
    /// subscribed to them itself; nil after it unsubscribed).
    var pushSubscription: Subscription? = Subscription(qos: .atLeastOnce)
    var broadcastSubscription: Subscription? = Subscription(qos: .atLeastOnce)
    /// Whether the session outlives the connection, and for how many seconds after it.
    var sessionExpiry: UInt32 = 0
    var persistentAtConnect = false
    var drainReason = MQTTReasonCode.serverShuttingDown
    /// Keep alive the node imposed (MQTT 5 server keep alive), if any.
    var serverKeepAlive: UInt16?
    /// The CONNECT's will, boxed: most terminals have none, and inline it would cost every
    /// connection the size of a ``StoredMessage`` (~170 bytes).
    var will: Will?
    /// A DISCONNECT arrived: no will unless it asked for one (MQTT 5 reason 0x04).
    var disconnected = false
    var wasTakenOver = false
    /// What the client accepts (MQTT 5 CONNECT properties).
    var clientReceiveMaximum = Int(UInt16.max)
    var clientMaximumPacketSize = Int.max
    /// Publishes from the terminal: aliases, acknowledgements in order, QoS 2 exchanges
    /// (set up for the protocol version at CONNECT).
    var inbound: InboundFlow
    /// QoS 1/2 messages routed to a session that does not outlive its connection, waiting for
    /// room in the window (the client's receive maximum) or a writable socket; bounded.
    var waiting = FIFO<(message: StoredMessage, shared: String?)>()
    /// Messages towards the terminal in flight, their packet ids, outbound topic aliases.
    var outbound = OutboundWindow()
    /// Ids of stored messages delivered for good (acknowledged, or sent at QoS 0) whose LREM
    /// has not been confirmed yet. List reads go out after those LREMs and cannot return
    /// them; a wake event that carries one of them (it raced a read) must not send it twice.
    var removing: Set<String> = []
    /// Packets that arrived while the session was being registered.
    var earlyPackets: [MQTTPacket] = []
    /// Live messages that arrived before the stored backlog was delivered (`shared` is the
    /// shared filter a routed publish is for, `tracked` whether a push has a status record).
    var earlyDeliveries: [(message: StoredMessage, tracked: Bool, routed: Bool, shared: String?)] = []
    /// Where the session stands in the terminal's stored list.
    var backlog = StoredBacklog()
    /// Packets of one socket read are being handled: flushes wait for the read's end, so the
    /// messages that several acknowledgements let out leave in one write.
    var reading = false
    var flushDeferred = false

    /// The session's state in Redis (its terminal's keys, once CONNECT named it).
    var store: SessionStore { SessionStore(node: node, terminal: terminal) }

    init(node: PushNodeContext, encoder: MQTTPacketEncoder) {
        self.node = node
        self.encoder = encoder
        self.inbound = InboundFlow(
            receiveMaximum: node.configuration.receiveMaximum, topicAliasMaximum: node.configuration.topicAliasMaximum,
            hasProperties: false)
    }

    /// When the register script went out (wakes that found no session since are caught up on).
    var registerSentAt = NIODeadline.uptimeNanoseconds(0)

    /// A registration waiting for the previous connection to stop (see `PendingTakeover`).
    var pendingTakeover: PendingTakeover?

    /// Publishes of this terminal waiting on Redis (any QoS). At the receive maximum the node
    /// stops reading from the terminal until half of them are done: a terminal that publishes
    /// faster than Redis takes it waits in its own socket, not in the node's memory.
    var routesPending = 0

    // MARK: Channel events

    func channelReadComplete(context: ChannelHandlerContext) {
        reading = false
        if flushDeferred {
            flushDeferred = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        connectDeadline = context.eventLoop.scheduleTask(in: .seconds(Int64(node.configuration.connectTimeout))) {
            if case .awaitingConnect = loopBound.value.phase { loopBound.value.close() }
        }
    }

    /// The context holds this handler: keeping it here after removal would keep both (and the
    /// channel) alive for good.
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let packet = unwrapInboundIn(data)
        lastReceived = .now()
        reading = true
        switch phase {
        case .awaitingConnect:
            guard case .connect(let connect) = packet else {
                logger.debug("first packet is not CONNECT", metadata: ["packet": "\(packet.typeCode)"])
                return close()
            }
            connectReceived(connect)
        case .registering:
            guard earlyPackets.count < 64 else { return protocolError("too many packets before CONNACK") }
            earlyPackets.append(packet)
        case .active, .draining:
            process(packet)
        case .stopped, .closed:
            break
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .active = phase {
            sendWaiting()
            pumpStored()
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? MQTTCodecError {
            node.metrics.protocolErrors.increment()
            logger.info("closing connection after a bad packet", metadata: ["error": "\(error)"])
            if version.hasProperties, case .active = phase {
                write(serverDisconnect(error.reasonCode, "\(error)"), flush: true)
            }
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
        }
        close()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasActive: Bool
        switch phase {
        case .active, .draining, .stopped: wasActive = true
        default: wasActive = false
        }
        if case .registering = phase { unregisterRoute() }
        phase = .closed
        if sweepSlot >= 0 { node.keepAliveSweepers.sweeper(for: context.eventLoop).remove(self) }
        connectDeadline?.cancel()
        if wasActive {
            node.metrics.connections.decrement()
            leaveLocalIndex()
            unregisterRoute()
            publishWill()
        }
        if let handle {
            node.registry.remove(handle)
            // The handle holds this handler: keeping it would keep the handler (and all it
            // holds, its CONNECT's properties included) alive after the connection.
            self.handle = nil
        }
        context.fireChannelInactive()
    }

    // MARK: Lifecycle

    /// A newer connection of the same terminal registered: leave without touching the route.
    /// From here on it delivers nothing, so the new connection can start once this returns:
    /// everything this one sent is already on its way to Redis (the `sent` hash), on the
    /// node's one Redis connection, ahead of whatever is sent after this.
    func takenOver(revoked: Bool = false) {
        switch phase {
        case .active, .draining: break
        case .registering:
            // Not started yet, and never will: the route it wrote is the newer connection's now.
            close()
            phase = .closed
            return
        default: return close()
        }
        phase = .stopped
        logger.info(revoked ? "credentials revoked: closing" : "session taken over")
        wasTakenOver = !revoked
        if version.hasProperties {
            let packet =
                revoked
                ? serverDisconnect(.administrativeAction, "the terminal's credentials were revoked")
                : serverDisconnect(.sessionTakenOver, "another connection took over this session")
            write(packet, flush: true)
        }
        close()
    }

    /// Closes the connection if it still has `epoch` (kick from another node, revocation).
    func kick(epoch: String, revoked: Bool) {
        guard epoch.isEmpty || epoch == self.epoch else { return }
        takenOver(revoked: revoked)
    }

    /// Node shutdown (or shedding load): stop delivering, let in-flight messages be
    /// acknowledged (up to `timeout`) so the terminal does not get them twice elsewhere, then
    /// DISCONNECT with `reason` (MQTT 5: 0x8B server shutting down, 0x9C use another server)
    /// and close. What is not acknowledged stays stored for the next connection.
    func drain(timeout: TimeAmount, reason: MQTTReasonCode = .serverShuttingDown) {
        guard case .active = phase, let context else { return close() }
        phase = .draining
        drainReason = reason
        if outbound.isEmpty { return finishDraining() }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: timeout) {
            if case .draining = loopBound.value.phase { loopBound.value.finishDraining() }
        }
    }

    func finishDraining() {
        if version.hasProperties {
            let reason = drainReason == .useAnotherServer ? "this node sheds load: connect again" : "this node is shutting down"
            write(serverDisconnect(drainReason, reason), flush: true)
        }
        close()
    }

    /// Watches the keep alive through the event loop's sweeper.
    func startKeepAliveTimer() {
        guard keepAlive > .zero, let context else { return }
        node.keepAliveSweepers.sweeper(for: context.eventLoop).add(self)
    }

    /// Whether nothing came for 1.5 times the keep alive by `now`.
    func keepAliveExpired(at now: NIODeadline) -> Bool {
        switch phase {
        case .active, .draining: break
        default: return false
        }
        return lastReceived + .nanoseconds(keepAlive.nanoseconds * 3 / 2) <= now
    }

    func keepAliveTimedOut() {
        logger.info("keepalive expired")
        if version.hasProperties { write(serverDisconnect(.keepAliveTimeout, "nothing received for 1.5 x the keep alive"), flush: true) }
        close()
    }

    /// Removes the route (if still this connection's) and ends or keeps the session. A
    /// persistent session whose expiry was lowered to 0 on DISCONNECT also leaves the
    /// stored-subscriber sets.
    func unregisterRoute() {
        guard !terminal.isEmpty else { return }
        let filters = subscriptions.keys.filter { !isAutomatic($0) && SharedFilter($0) == nil }
        let store = self.store
        let removal = store.unregister(epoch: epoch, expiry: sessionExpiry)
        let logger = self.logger
        removal.whenFailure { logger.warning("removing the route failed", metadata: ["error": "\($0)"]) }
        guard persistentAtConnect, sessionExpiry == 0, !filters.isEmpty else { return }
        removal.whenSuccess { removed in
            if removed { store.send([.storedSubscriptions(adding: false, filters: filters)]) }
        }
    }

    /// Flushes now, or at the end of the socket read being handled.
    func flush() {
        if reading {
            flushDeferred = true
        } else {
            context?.flush()
        }
    }

    func write(_ packet: MQTTPacket, flush: Bool) {
        guard let context else { return }
        context.write(wrapOutboundOut(packet), promise: nil)
        if flush { self.flush() }
    }

    func close() {
        guard let context else { return }
        if case .closed = phase { return }
        // What was written during this read (a refusing CONNACK, a DISCONNECT) goes out first.
        if flushDeferred {
            flushDeferred = false
            context.flush()
        }
        context.close(promise: nil)
    }
}
