import FleetCore
import FleetRedis
import Logging
import MQTTCodec
import NIOCore

/// One terminal's MQTT connection: the channel glue around its ``MQTTSession``.
///
/// Reads and writes the connection's bytes itself (``MQTTPacketReader``, and each packet
/// encoded into its own buffer): a codec handler in front of it would box every packet in
/// `NIOAny`, both ways, and add a pipeline step per packet.
///
/// Lives on its channel's event loop. It feeds the session events (packets, writability,
/// Redis replies hopped back to the loop, timers, messages the node routes here) and performs
/// the actions the session asks for, in order: writes and flushes (coalesced over one socket
/// read), Redis commands through ``SessionStore``, timers, the node's registry and limiter.
final class MQTTConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let node: PushNodeContext
    private var reader: MQTTPacketReader
    /// The version packets are written in (the session's, once CONNECT named one).
    private var version = MQTTProtocolVersion.v3_1_1
    var context: ChannelHandlerContext?
    var session: MQTTSession
    /// Where this connection is in its event loop's ``KeepAliveSweeper`` (-1: not in it).
    var sweepSlot = -1
    var handle: SessionHandle?
    /// The terminal's previous connection on this node, while it is being stopped (boxed:
    /// rare, and an idle connection should not carry its room).
    private var predecessor: Predecessor?
    /// The connect deadline, then the takeover deadline (never both at once).
    private var deadline: Scheduled<Void>?
    /// Packets of one socket read are being handled: flushes wait for the read's end, so the
    /// messages that several acknowledgements let out leave in one write.
    private var reading = false
    private var flushDeferred = false
    /// Actions are being performed: those of an event fed meanwhile (a write that changed
    /// writability) are performed after them, in order.
    private var performing = false

    /// The address a ``ProxyProtocolHandler`` read, until the first read takes it.
    private var proxied: ProxiedPeer?

    init(node: PushNodeContext, proxied: ProxiedPeer? = nil) {
        self.node = node
        self.proxied = proxied
        self.reader = MQTTPacketReader(maximumPacketSize: node.configuration.maximumPacketSize)
        self.session = MQTTSession(environment: node.sessionEnvironment)
    }

    /// The session's state in Redis (its terminal's keys, once CONNECT named it).
    var store: RedisSessionStore { RedisSessionStore(node: node, terminal: session.terminal) }
    var logger: Logger { session.logger }
    private var loopBound: NIOLoopBound<MQTTConnectionHandler>? {
        context.map { NIOLoopBound(self, eventLoop: $0.eventLoop) }
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Behind a PROXY header the address comes with the first read.
        if proxied == nil { session.peer = PeerAddress(context.remoteAddress) }
        session.connectionOpened()
        perform()
    }

    /// The context holds this handler: keeping it here after removal would keep both (and the
    /// channel) alive for good.
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reading = true
        if let proxied {
            session.peer = proxied.address
            self.proxied = nil
        }
        do {
            try reader.read(unwrapInboundIn(data)) { packet in
                session.packetReceived(packet)
                perform()
            }
        } catch {
            malformed(error)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        reading = false
        if flushDeferred {
            flushDeferred = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        session.writabilityChanged(context.channel.isWritable)
        perform()
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        session.close()
        perform()
    }

    private func malformed(_ error: any Error) {
        if let error = error as? MQTTCodecError {
            session.malformedPacket(error)
        } else {
            logger.debug("unreadable packet", metadata: ["error": "\(error)"])
            session.close()
        }
        perform()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if sweepSlot >= 0 { node.keepAliveSweepers.sweeper(for: context.eventLoop).remove(self) }
        // The channel is gone: whichever deadline it holds goes with it.
        deadline?.cancel()
        deadline = nil
        flushDeferredWrites()
        session.closed()
        perform()
        if let handle {
            node.registry.remove(handle)
            // The handle holds this handler: keeping it would keep the handler (and all it
            // holds) alive after the connection.
            self.handle = nil
        }
        predecessor = nil
        context.fireChannelInactive()
    }

    // MARK: Events from the node (on this loop, through ``SessionHandle``)

    func takenOver() { feed { $0.takenOver() } }
    func kick(epoch: String, revoked: Bool) { feed { $0.kick(epoch: epoch, revoked: revoked) } }
    func drain(timeout: TimeAmount, reason: MQTTReasonCode = .serverShuttingDown) {
        feed { $0.drain(timeout: timeout, reason: reason) }
    }
    func predecessorStopped(successor: String) { feed { $0.predecessorStopped(successor: successor) } }
    func wake() { feed { $0.wake() } }
    func wake(entries: [String]) { feed { $0.wake(entries: entries) } }
    func deliverLive(_ message: StoredMessage, tracked: Bool, countReach: Bool = false, payload: ByteBuffer? = nil) {
        feed { $0.deliverLive(message, tracked: tracked, countReach: countReach, payload: payload) }
    }
    func deliverPublished(_ message: StoredMessage, shared: String?, payload: ByteBuffer? = nil) {
        feed { $0.deliverPublished(message, shared: shared, payload: payload) }
    }
    func keepAliveExpired(at now: NIODeadline) -> Bool { session.keepAliveExpired(at: now) }
    func keepAliveTimedOut() { feed { $0.keepAliveTimedOut() } }

    /// Feeds one event to the session and performs what it asks for.
    func feed(_ event: (inout MQTTSession) -> Void) {
        event(&session)
        perform()
    }

    // MARK: Actions

    /// Performs the session's actions in order (also those that performing them leads to).
    func perform() {
        guard !performing else { return }
        performing = true
        defer { performing = false }
        while session.hasActions {
            for action in session.takeActions() { perform(action) }
        }
    }

    private func perform(_ action: MQTTSessionAction) {
        guard let context else { return }
        switch action {
        case .write(let packet):
            do {
                context.write(wrapOutboundOut(try packet.encoded(version: version, allocator: context.channel.allocator)), promise: nil)
            } catch {
                // Packets the session builds always encode; one that does not is a bug here.
                logger.error("packet could not be encoded", metadata: ["error": "\(error)"])
                session.close()
            }
        case .flush:
            if reading { flushDeferred = true } else { context.flush() }
        case .close:
            // The connection stops delivering: its `sent` records and removals go to Redis now,
            // ahead of whatever the node sends after (a takeover's `stopped` answer, the next read).
            flushDeferredWrites()
            // What was written during this read (a refusing CONNACK, a DISCONNECT) goes out first.
            if flushDeferred {
                flushDeferred = false
                context.flush()
            }
            context.close(promise: nil)
        case .useVersion(let version):
            self.version = version
        case .setReading(let enabled):
            context.channel.setOption(ChannelOptions.autoRead, value: enabled).whenFailure { _ in }
        case .schedule(let timer, let delay):
            schedule(timer, after: delay, on: context.eventLoop)
        case .cancel(.connectDeadline), .cancel(.takeover):
            deadline?.cancel()
            deadline = nil
        case .cancel:
            break
        case .watchKeepAlive:
            node.keepAliveSweepers.sweeper(for: context.eventLoop).add(self)
        case .admit:
            admit(on: context.eventLoop)
        case .claimHandle:
            claimHandle(on: context.eventLoop)
        case .stopLocalPredecessor(let successor):
            guard let previous = predecessor?.handle, let handle else { return }
            predecessor = nil
            previous.execute { old in
                old.takenOver()
                handle.execute { $0.predecessorStopped(successor: successor) }
            }
        case .recordState(let messageID, let state):
            node.status.record(messageID, terminal: session.terminal, state)
        case .countReach(let messageID):
            node.status.countReach(messageID)
        case .store(let writes):
            store.send(writes)
        case .publishWill(let will):
            DelayedWills.publish(will, context: node)
        case .keepWill(let will, let epoch, let delay):
            DelayedWills(context: node).keep(will, terminal: session.terminal, epoch: epoch, delay: delay)
        case .unregister(let epoch, let expiry, let forget):
            unregister(epoch: epoch, expiry: expiry, forgetStoredFilters: forget)
        case .register, .kick, .reload, .readStored, .storeRemoving, .recordSubscriptions, .readRetained, .route:
            performRedis(action, on: context.eventLoop)
        }
    }

    /// The actions answered by a Redis reply: issued, and the reply fed back on this loop.
    /// Runs a read of the list once the removals released before it are in Redis: on one
    /// server the connection's order sees to it; in Redis Cluster they may be waiting for their
    /// states' replies (``StatusRecorder/settled()``).
    private func afterRemovals<Value: Sendable>(_ read: @escaping @Sendable () -> EventLoopFuture<Value>) -> EventLoopFuture<Value> {
        guard node.redis.isCluster else { return read() }
        return node.status.settled().flatMap(read)
    }

    private func performRedis(_ action: MQTTSessionAction, on loop: any EventLoop) {
        let bound = NIOLoopBound(self, eventLoop: loop)
        let store = self.store
        switch action {
        case .register(let request):
            store.register(request, on: loop).whenComplete { result in bound.value.feed { $0.registered(result) } }
        case .kick(let oldNode, let event):
            store.kick(on: oldNode, event).hop(to: loop).whenComplete { result in
                bound.value.feed { $0.kickAnswered(listeners: try? result.get()) }
            }
        case .reload(let registration, let window):
            node.status.release()
            afterRemovals { store.reload(registration, window: window) }.hop(to: loop).whenComplete { result in
                bound.value.feed { $0.reloaded(result) }
            }
        case .readStored(let read):
            node.status.release()
            afterRemovals { store.read(read) }.hop(to: loop).whenComplete { result in bound.value.feed { $0.storedRead(read, result) } }
        case .storeRemoving(let writes, let ids):
            store.remove(writes, confirmed: { bound.value.feed { $0.removalConfirmed(ids) } }, on: loop)
        case .recordSubscriptions(let writes, let reply):
            store.write(writes).hop(to: loop).whenComplete { result in
                let failure: (any Error)? = if case .failure(let error) = result { error } else { nil }
                bound.value.feed { $0.subscriptionsRecorded(reply, failed: failure) }
            }
        case .readRetained(let requests):
            store.retained(for: requests.map(\.filter)).hop(to: loop).whenSuccess { messages in
                bound.value.feed { $0.retainedRead(messages, for: requests) }
            }
        case .route(let message, let packetID):
            node.route(message).hop(to: loop).whenComplete { result in
                let outcome: RouteOutcome =
                    switch result {
                    case .success: .accepted
                    case .failure(let error as TopicRouter.RetainedStoreFull): .retainedStoreFull("\(error)")
                    case .failure(let error): .failed(error)
                    }
                bound.value.feed { $0.routed(packetID: packetID, outcome) }
            }
        default:
            preconditionFailure("not a Redis action: \(action)")
        }
    }

    private func schedule(_ timer: SessionTimer, after delay: TimeAmount, on loop: any EventLoop) {
        let bound = NIOLoopBound(self, eventLoop: loop)
        let scheduled = loop.scheduleTask(in: delay) { bound.value.feed { $0.timerFired(timer) } }
        switch timer {
        case .connectDeadline, .takeover: deadline = scheduled
        case .admission, .drain: break
        }
    }

    private func admit(on loop: any EventLoop) {
        guard let limiter = node.connectLimiter else { return session.admitted() }
        guard let delay = limiter.admit() else { return session.throttled() }
        session.admitted(after: delay)
    }

    /// Registers this connection in the node's registry; the session learns whether it
    /// replaced one here and whether a wake went astray meanwhile.
    private func claimHandle(on loop: any EventLoop) {
        let handle = SessionHandle(
            terminal: session.terminal, epoch: session.epoch, connectedAt: session.connectedAt,
            handler: NIOLoopBound(self, eventLoop: loop))
        self.handle = handle
        let previous = node.registry.register(handle)
        predecessor = previous.map(Predecessor.init)
        let missed = node.registry.takeMissedWake(for: session.terminal, since: session.registerSentAt)
        session.handleClaimed(previousHere: previous != nil, missedWake: missed)
    }

    private final class Predecessor {
        let handle: SessionHandle
        init(_ handle: SessionHandle) { self.handle = handle }
    }

    /// What the node holds back to batch goes to Redis now: this terminal's `sent` records,
    /// and the removals from lists waiting for their final states (the connection stops, or
    /// reads its list: the list must be as its acknowledgements left it).
    private func flushDeferredWrites() {
        guard !session.terminal.isEmpty else { return }
        node.sent.flush(terminal: session.terminal)
        node.status.release()
    }

    private func unregister(epoch: String, expiry: UInt32, forgetStoredFilters forget: [String]) {
        let store = self.store
        let logger = self.logger
        let removal = store.unregister(epoch: epoch, expiry: expiry)
        removal.whenFailure { logger.warning("removing the route failed", metadata: ["error": "\($0)"]) }
        guard !forget.isEmpty else { return }
        removal.whenSuccess { removed in
            if removed { store.send([.storedSubscriptions(adding: false, filters: forget)]) }
        }
    }
}
