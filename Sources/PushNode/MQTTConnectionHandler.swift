import FleetCore
import Logging
import MQTTCodec
import NIOCore
import RedisClient

/// One terminal's MQTT connection: authentication, session registration, delivery and acks.
///
/// Lives on its channel's event loop. Redis replies are hopped back to that loop before they
/// touch any state. Stored messages are never popped: an entry leaves the terminal's Redis
/// list only when the terminal acknowledged it (QoS 1), it was written (QoS 0), or it expired.
final class MQTTConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    private enum Phase {
        case awaitingConnect
        case registering
        case active
        /// Node shutdown: no new deliveries; closes once in-flight messages are acknowledged.
        case draining
        /// Taken over or kicked: delivers and reads nothing more; the channel is closing.
        case stopped
        case closed
    }

    private final class Will {
        let message: StoredMessage
        /// Seconds after the connection ends (MQTT 5 will delay interval).
        let delay: UInt32

        init(message: StoredMessage, delay: UInt32) {
            self.message = message
            self.delay = delay
        }
    }

    /// A QoS 1 or 2 message written to the terminal and not yet acknowledged.
    private struct Inflight {
        var message: StoredMessage
        /// The stored JSON entry, or nil for messages that were never stored.
        var entry: String?
        /// Whether the message has a per-terminal status record.
        var tracked: Bool
        /// The QoS it was sent with (the message's, capped by the subscription).
        var qos: MQTTQoS
        /// QoS 2 only: PUBREC arrived and PUBREL was sent; waiting for PUBCOMP.
        var released = false
    }

    private let node: PushNodeContext
    private let encoder: MQTTPacketEncoder
    private var context: ChannelHandlerContext?
    private var phase = Phase.awaitingConnect
    /// The node's logger with this terminal's id; built when something is logged, so an idle
    /// connection does not carry a logger of its own.
    private var logger: Logger {
        guard !terminal.isEmpty else { return node.logger }
        var logger = node.logger
        logger[metadataKey: "terminal"] = "\(terminal)"
        return logger
    }

    private var version = MQTTProtocolVersion.v3_1_1
    private var terminal = ""
    private var epoch = ""
    private var connectedAt: Int64 = 0
    private var cleanStart = true
    private var keepAlive: TimeAmount = .zero
    /// What the session needs of its CONNECT's properties (not the properties themselves: a
    /// client's user properties would stay in memory as long as the connection).
    private var requestedSessionExpiry: UInt32?
    private var requestsProblemInformation = true
    private var lastReceived = NIODeadline.now()
    /// Where this connection is in its event loop's ``KeepAliveSweeper`` (-1: not in it).
    var sweepSlot = -1
    private var connectDeadline: Scheduled<Void>?
    private var handle: SessionHandle?

    /// A QoS 1 or 2 PUBLISH from the terminal whose routing has not finished: its PUBACK /
    /// PUBREC goes out when it and every earlier one are done (MQTT 4.6 ordering).
    private struct InboundPublish {
        var packetID: UInt16
        var qos: MQTTQoS
        var reasonCode: MQTTReasonCode?
        var reasonString: String?
    }

    /// Topic filter -> subscription, without the automatic ones (below).
    private var subscriptions: [String: Subscription] = [:]
    /// The automatic `push/<id>` and `broadcast` subscriptions (QoS 1 unless the terminal
    /// subscribed to them itself; nil after it unsubscribed).
    private var pushSubscription: Subscription? = Subscription(qos: .atLeastOnce)
    private var broadcastSubscription: Subscription? = Subscription(qos: .atLeastOnce)
    /// Whether the session outlives the connection, and for how many seconds after it.
    private var sessionExpiry: UInt32 = 0
    private var persistentAtConnect = false
    private var drainReason = MQTTReasonCode.serverShuttingDown
    /// Keep alive the node imposed (MQTT 5 server keep alive), if any.
    private var serverKeepAlive: UInt16?
    /// The CONNECT's will, boxed: most terminals have none, and inline it would cost every
    /// connection the size of a ``StoredMessage`` (~170 bytes).
    private var will: Will?
    /// A DISCONNECT arrived: no will unless it asked for one (MQTT 5 reason 0x04).
    private var disconnected = false
    private var wasTakenOver = false
    /// What the client accepts (MQTT 5 CONNECT properties).
    private var clientReceiveMaximum = Int(UInt16.max)
    private var clientMaximumPacketSize = Int.max
    private var clientTopicAliasMaximum: UInt16 = 0
    private var inboundAliases: [UInt16: String] = [:]
    private var outboundAliases: [String: UInt16] = [:]
    private var inboundPending: [InboundPublish] = []
    /// QoS 1/2 messages routed to a session that does not outlive its connection, waiting for
    /// room in the window (the client's receive maximum) or a writable socket; bounded.
    private var waiting = FIFO<(message: StoredMessage, shared: String?)>()
    /// QoS 2 packet ids received, PUBREC sent, waiting for PUBREL.
    private var awaitingRelease: Set<UInt16> = []
    private var inflight: [UInt16: Inflight] = [:]
    /// Ids of stored messages delivered for good (acknowledged, or sent at QoS 0) whose LREM
    /// has not been confirmed yet. List reads go out after those LREMs and cannot return
    /// them; a wake event that carries one of them (it raced a read) must not send it twice.
    private var removing: Set<String> = []
    private var inflightIDs: Set<String> = []
    private var nextPacketID: UInt16 = 1
    /// Packets that arrived while the session was being registered.
    private var earlyPackets: [MQTTPacket] = []
    /// Live messages that arrived before the stored backlog was delivered (`shared` is the
    /// shared filter a routed publish is for, `tracked` whether a push has a status record).
    private var earlyDeliveries: [(message: StoredMessage, tracked: Bool, routed: Bool, shared: String?)] = []
    /// Where the session stands in the terminal's stored list.
    private var backlog = StoredBacklog()
    /// Packets of one socket read are being handled: flushes wait for the read's end, so the
    /// messages that several acknowledgements let out leave in one write.
    private var reading = false
    private var flushDeferred = false

    init(node: PushNodeContext, encoder: MQTTPacketEncoder) {
        self.node = node
        self.encoder = encoder
    }

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

    // MARK: CONNECT

    private func connectReceived(_ connect: MQTTConnectPacket) {
        connectDeadline?.cancel()
        connectDeadline = nil
        guard connect.protocolVersion.isSupported else {
            // Answer in the 3.1.1 format: a client of an unknown version can parse that.
            return refuse(.v3UnacceptableProtocolVersion, v5: .unsupportedProtocolVersion)
        }
        version = connect.protocolVersion
        encoder.version = version
        cleanStart = connect.cleanStart
        requestedSessionExpiry = connect.properties.integer(.sessionExpiryInterval)
        requestsProblemInformation = connect.properties.integer(.requestProblemInformation) != 0
        let maximumExpiry = UInt32(clamping: node.configuration.maximumSessionExpiry)
        if version.hasProperties {
            let properties = connect.properties
            // Enhanced authentication (AUTH exchanges) is not offered.
            if properties[.authenticationMethod] != nil {
                return refuse(.v3NotAuthorized, v5: .badAuthenticationMethod, reason: "enhanced authentication is not offered")
            }
            if let value = properties.integer(.receiveMaximum) {
                guard value > 0 else { return refuse(.v3ServerUnavailable, v5: .protocolError) }
                clientReceiveMaximum = Int(value)
            }
            if let value = properties.integer(.maximumPacketSize) {
                guard value > 0 else { return refuse(.v3ServerUnavailable, v5: .protocolError) }
                clientMaximumPacketSize = Int(value)
            }
            clientTopicAliasMaximum = UInt16(clamping: properties.integer(.topicAliasMaximum) ?? 0)
            sessionExpiry = min(properties.integer(.sessionExpiryInterval) ?? 0, maximumExpiry)
        } else {
            sessionExpiry = connect.cleanStart ? 0 : maximumExpiry
        }

        var clientID = connect.clientIdentifier
        var assigned: String?
        if clientID.isEmpty {
            guard node.configuration.allowAnonymous, connect.cleanStart || version.hasProperties else {
                return refuse(.v3IdentifierRejected, v5: .clientIdentifierNotValid)
            }
            clientID = "auto-" + FleetClock.newEpoch()
            assigned = clientID
        }
        if !TerminalID.isValid(clientID) {
            // Any client id MQTT allows is taken in anonymous mode, under a key-safe name.
            guard node.configuration.allowAnonymous, clientID.utf8.count <= 256 else {
                return refuse(.v3IdentifierRejected, v5: .clientIdentifierNotValid)
            }
            clientID = TerminalID.escaped(clientID)
        }

        var issuedAt = ""
        if let password = connect.passwordString, !password.isEmpty {
            guard connect.username == nil || connect.username == clientID else {
                return refuse(.v3NotAuthorized, v5: .notAuthorized)
            }
            switch node.credentials.verify(terminal: clientID, password: password, now: FleetClock.nowSeconds()) {
            case .success(let verified): issuedAt = String(verified.issuedAt)
            case .failure(let failure):
                logger.info("credential refused", metadata: ["terminal": "\(clientID)", "reason": "\(failure)"])
                return refuse(.v3NotAuthorized, v5: .notAuthorized, reason: "credential refused")
            }
        } else if !node.configuration.allowAnonymous {
            return refuse(.v3BadUserNameOrPassword, v5: .badUserNameOrPassword, reason: "a credential is required as the password")
        }

        terminal = clientID
        persistentAtConnect = sessionExpiry > 0
        if let will = connect.will {
            // Published later as the terminal's PUBLISH would be: the same rules for its topic.
            guard MQTTTopic.isValidTopicName(will.topic), MQTTTopic.levelCount(will.topic) <= node.configuration.maximumTopicLevels
            else {
                return refuse(.v3NotAuthorized, v5: .topicNameInvalid, reason: "the will topic is not a valid topic name")
            }
            let message = StoredMessage(
                published: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, properties: will.properties,
                origin: clientID)
            self.will = Will(message: message, delay: will.properties.integer(.willDelayInterval) ?? 0)
        }
        epoch = FleetClock.newEpoch()
        connectedAt = FleetClock.nowMillis()
        var keepAliveSeconds = connect.keepAlive
        let maximumKeepAlive = node.configuration.maximumKeepAlive
        if version.hasProperties, maximumKeepAlive > 0, keepAliveSeconds == 0 || Int(keepAliveSeconds) > maximumKeepAlive {
            // MQTT 5 lets the server set the keep alive (CONNACK server keep alive); a 3.1.1
            // client cannot be told, so it keeps its own.
            keepAliveSeconds = UInt16(clamping: maximumKeepAlive)
            serverKeepAlive = keepAliveSeconds
        }
        keepAlive = .seconds(Int64(keepAliveSeconds))
        phase = .registering
        guard let limiter = node.connectLimiter else { return register(issuedAt: issuedAt, assignedID: assigned) }
        guard let delay = limiter.admit() else {
            node.metrics.connectsThrottled.increment()
            return refuse(.v3ServerUnavailable, v5: .connectionRateExceeded)
        }
        guard delay > .zero, let context else { return register(issuedAt: issuedAt, assignedID: assigned) }
        node.metrics.connectsThrottled.increment()
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let (issued, assignedID) = (issuedAt, assigned)
        context.eventLoop.scheduleTask(in: delay) {
            if case .registering = loopBound.value.phase { loopBound.value.register(issuedAt: issued, assignedID: assignedID) }
        }
    }

    private func register(issuedAt: String, assignedID: String?) {
        guard let context else { return }
        // The script reads the head of the list: the backlog's first read.
        guard let read = backlog.nextRead(room: window, window: window) else { preconditionFailure("a new session reads its list") }
        let keys = node.keys
        let command = FleetScripts.register.command(
            keys: [
                keys.route(terminal), keys.session(terminal), keys.subscriptions(terminal), keys.revoked(terminal), keys.queue(terminal),
                keys.sent(terminal), keys.released(terminal), keys.releasing(terminal),
            ],
            arguments: [
                node.nodeID, epoch, String(connectedAt), cleanStart ? "1" : "0", issuedAt,
                String(read.count), sessionExpiry > 0 ? "1" : "0",
            ]
        )
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        node.redis.pipelineFuture([command]).hop(to: context.eventLoop).whenComplete { result in
            loopBound.value.registered(
                result.flatMap { replies in Result { try SessionRegistration(reply: replies[0].throwingError()) } }, read: read,
                assignedID: assignedID)
        }
    }

    /// A registration waiting for the terminal's previous connection to stop (a takeover);
    /// boxed, since most connections never wait.
    private final class PendingTakeover {
        var registration: SessionRegistration
        let read: StoredBacklog.Read
        let assignedID: String?
        var deadline: Scheduled<Void>?

        init(registration: SessionRegistration, read: StoredBacklog.Read, assignedID: String?) {
            self.registration = registration
            self.read = read
            self.assignedID = assignedID
        }
    }

    private var pendingTakeover: PendingTakeover?

    /// How long a new connection waits for its predecessor to stop before it goes ahead.
    static let takeoverTimeout = TimeAmount.seconds(3)

    private func registered(_ result: Result<SessionRegistration, any Error>, read: StoredBacklog.Read, assignedID: String?) {
        guard case .registering = phase, let context else { return }
        let registration: SessionRegistration
        switch result {
        case .success(let decoded):
            registration = decoded
        case .failure(SessionRegistration.Failure.revoked):
            logger.info("credential revoked")
            return refuse(.v3NotAuthorized, v5: .notAuthorized, reason: "credential revoked")
        case .failure(let error):
            logger.warning("session registration failed", metadata: ["error": "\(error)"])
            return refuse(.v3ServerUnavailable, v5: .serverUnavailable)
        }
        let handle = SessionHandle(
            terminal: terminal, epoch: epoch, connectedAt: connectedAt, handler: NIOLoopBound(self, eventLoop: context.eventLoop))
        self.handle = handle
        // Takeover: the previous connection of this terminal stops delivering (wherever it
        // is) before this one starts, so no message goes out on both; what it sent and did not
        // see acknowledged is then read again and goes out here with DUP.
        let oldNode = registration.oldNode
        if let previous = node.registry.register(handle) {
            waitForPredecessor(registration, read: read, assignedID: assignedID)
            let successor = self.epoch
            previous.execute { old in
                old.takenOver()
                handle.execute { $0.predecessorStopped(successor: successor) }
            }
        } else if !oldNode.isEmpty, oldNode != node.nodeID {
            waitForPredecessor(registration, read: read, assignedID: assignedID)
            var kick = NodeEvent(kind: .kick, terminals: [terminal], epoch: registration.oldEpoch)
            (kick.from, kick.successor) = (node.nodeID, epoch)
            let successor = self.epoch
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            node.redis.pipelineFuture([RedisCommand("SPUBLISH", node.keys.nodeChannel(oldNode), kick.encoded())])
                .hop(to: context.eventLoop).whenComplete { result in
                    // Nobody listens on that node's channel (it died): nothing to wait for, and
                    // nothing changed since the registration read (a reconnect storm after a
                    // node died costs no extra read). Redis unavailable: read again when it is.
                    guard case .success(let replies) = result, replies.first?.int ?? 0 > 0 else {
                        let unheard = (try? result.get())?.first?.int == 0
                        return loopBound.value.predecessorStopped(successor: successor, reload: !unheard)
                    }
                }
        } else {
            activate(registration, read: read, assignedID: assignedID)
        }
    }

    private func waitForPredecessor(_ registration: SessionRegistration, read: StoredBacklog.Read, assignedID: String?) {
        guard let context else { return }
        let pending = PendingTakeover(registration: registration, read: read, assignedID: assignedID)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let successor = epoch
        pending.deadline = context.eventLoop.scheduleTask(in: Self.takeoverTimeout) {
            loopBound.value.logger.info("the previous connection did not confirm it stopped: going ahead")
            loopBound.value.predecessorStopped(successor: successor)
        }
        pendingTakeover = pending
    }

    /// The terminal's previous connection stopped (or could not be reached): read what it
    /// left in Redis and start.
    func predecessorStopped(successor: String, reload: Bool = true) {
        guard successor == epoch, case .registering = phase, let pending = pendingTakeover, let context else { return }
        pendingTakeover = nil
        pending.deadline?.cancel()
        guard reload else { return activate(pending.registration, read: pending.read, assignedID: pending.assignedID) }
        let commands = SessionRegistration.reloadCommands(keys: node.keys, terminal: terminal, window: pending.read.count)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundPending = NIOLoopBound(pending, eventLoop: context.eventLoop)
        node.redis.pipelineFuture(commands).hop(to: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            let pending = boundPending.value
            guard case .registering = handler.phase else { return }
            var registration = pending.registration
            switch result {
            case .success(let replies): registration.reload(replies)
            case .failure(let error):
                handler.logger.warning("reading the session after a takeover failed", metadata: ["error": "\(error)"])
                return handler.refuse(.v3ServerUnavailable, v5: .serverUnavailable)
            }
            handler.activate(registration, read: pending.read, assignedID: pending.assignedID)
        }
    }

    /// Starts the session: CONNACK, restored subscriptions, PUBRELs of a resumed session, the
    /// stored list, then what arrived meanwhile.
    private func activate(_ registration: SessionRegistration, read: StoredBacklog.Read, assignedID: String?) {
        let sessionPresent = !cleanStart && registration.sessionExisted
        // A clean start ended the old session: its filters leave the offline index.
        let discarded = registration.discardedFilters.filter { SharedFilter($0) == nil }
        var commands: [RedisCommand] = []
        if !discarded.isEmpty { commands.append(node.storedSubscriptionsCommand(terminal: terminal, adding: false, filters: discarded)) }
        awaitingRelease = Set(registration.released)

        subscriptions = [:]
        var indexed: [String] = []
        var restored: [String] = []
        for (filter, encoded) in registration.subscriptions {
            guard let subscription = Subscription(encoded: encoded) else { continue }
            if isAutomatic(filter) {
                setAutomatic(filter, subscription)
                continue
            }
            subscriptions[filter] = subscription
            if joinLocalIndex(filter) { indexed.append(filter) }
            if SharedFilter(filter) == nil { restored.append(filter) }
        }
        if !indexed.isEmpty { commands.append(node.indexUpdateCommand(adding: true, filters: indexed)) }
        if sessionExpiry > 0, !restored.isEmpty {
            commands.append(node.storedSubscriptionsCommand(terminal: terminal, adding: true, filters: restored))
        }
        if !commands.isEmpty { node.redis.fireAndForget(commands) }

        var properties: MQTTProperties = []
        if version.hasProperties {
            if let assignedID { properties.append(.assignedClientIdentifier, .string(assignedID)) }
            if let requested = requestedSessionExpiry, requested != sessionExpiry {
                properties.append(.sessionExpiryInterval, .fourByteInteger(sessionExpiry))
            }
            if let serverKeepAlive { properties.append(.serverKeepAlive, .twoByteInteger(serverKeepAlive)) }
            properties.append(.receiveMaximum, .twoByteInteger(UInt16(clamping: node.configuration.receiveMaximum)))
            properties.append(.maximumPacketSize, .fourByteInteger(UInt32(node.configuration.maximumPacketSize)))
            properties.append(.topicAliasMaximum, .twoByteInteger(UInt16(clamping: node.configuration.topicAliasMaximum)))
        }
        write(.connAck(MQTTConnAckPacket(sessionPresent: sessionPresent, reasonCode: .success, properties: properties)), flush: false)
        // A resumed session's QoS 2 messages that were received but not completed: PUBREL again
        // with their packet ids (MQTT 4.4).
        if sessionPresent {
            for packetID in registration.releasing where packetID != 0 {
                let placeholder = StoredMessage(id: "pubrel:\(packetID)", qos: 2, expiresAt: 0, topic: "", payload: [])
                inflight[packetID] = Inflight(message: placeholder, entry: nil, tracked: false, qos: .exactlyOnce, released: true)
                write(.pubRel(MQTTAckPacket(packetIdentifier: packetID)), flush: false)
            }
        }
        phase = .active
        node.metrics.connectsAccepted.increment()
        node.metrics.connections.increment()
        startKeepAliveTimer()

        readCompleted(read, entries: registration.queue, sent: registration.sent)
        let live = earlyDeliveries
        earlyDeliveries = []
        for early in live {
            if early.routed {
                deliverPublished(early.message, shared: early.shared)
            } else {
                deliverLive(early.message, tracked: early.tracked)
            }
        }

        let early = earlyPackets
        earlyPackets = []
        for packet in early { process(packet) }
        flush()
    }

    /// Refuses the CONNECT; MQTT 5 clients also get `reason` as the reason string.
    private func refuse(_ v3: MQTTReasonCode, v5: MQTTReasonCode, reason: String? = nil) {
        node.metrics.connectsRefused.increment()
        let code = version.hasProperties ? v5 : v3
        var properties: MQTTProperties = []
        if version.hasProperties, let reason { properties.append(.reasonString, .string(reason)) }
        write(.connAck(MQTTConnAckPacket(sessionPresent: false, reasonCode: code, properties: properties)), flush: true)
        close()
    }

    /// Whether the client accepts reason strings on acknowledgements (MQTT 5 request problem
    /// information; CONNACK and DISCONNECT carry them regardless).
    private var wantsProblemInformation: Bool { version.hasProperties && requestsProblemInformation }

    /// A DISCONNECT from the server, with a reason string.
    private func serverDisconnect(_ code: MQTTReasonCode, _ reason: String) -> MQTTPacket {
        .disconnect(MQTTDisconnectPacket(reasonCode: code, properties: [MQTTProperty(.reasonString, .string(reason))]))
    }

    // MARK: Packets from an active session

    private func process(_ packet: MQTTPacket) {
        switch packet {
        case .publish(let publish):
            publishReceived(publish)
        case .pubRel(let ack):
            released(ack.packetIdentifier)
        case .pubAck(let ack):
            acknowledged(ack.packetIdentifier)
        case .pubRec(let ack):
            received(ack)
        case .pubComp(let ack):
            completed(ack.packetIdentifier)
        case .subscribe(let subscribe):
            subscribeReceived(subscribe)
        case .unsubscribe(let unsubscribe):
            unsubscribeReceived(unsubscribe)
        case .pingReq:
            write(.pingResp, flush: true)
        case .disconnect(let disconnect):
            disconnectReceived(disconnect)
        case .connect:
            protocolError("second CONNECT")
        case .connAck, .subAck, .unsubAck, .pingResp, .auth:
            protocolError("unexpected packet type \(packet.typeCode)")
        }
    }

    private func protocolError(_ reason: String) {
        disconnect(.protocolError, reason)
    }

    /// Ends the connection for a client's mistake: MQTT 5 gets DISCONNECT with the reason.
    private func disconnect(_ code: MQTTReasonCode, _ reason: String) {
        node.metrics.protocolErrors.increment()
        logger.info("closing the connection", metadata: ["reason": "\(reason)", "code": "\(code)"])
        if version.hasProperties { write(serverDisconnect(code, reason), flush: true) }
        close()
    }

    /// Unacknowledged QoS 1/2 messages towards the terminal at most: ours, or less if the
    /// client's receive maximum says so.
    private var window: Int { min(node.configuration.inflightWindow, clientReceiveMaximum) }

    private func disconnectReceived(_ disconnect: MQTTDisconnectPacket) {
        if let requested = disconnect.properties.integer(.sessionExpiryInterval) {
            // A session that ends with the connection cannot be made to outlive it (MQTT 5 3.14.2.2.2).
            guard sessionExpiry > 0 || requested == 0 else { return protocolError("session expiry set on DISCONNECT after 0 on CONNECT") }
            sessionExpiry = min(requested, UInt32(clamping: node.configuration.maximumSessionExpiry))
        }
        disconnected = true
        if disconnect.reasonCode != .disconnectWithWill { will = nil }
        close()
    }

    // MARK: Terminal publishes

    private func publishReceived(_ publish: MQTTPublishPacket) {
        var topic = publish.topicName
        if version.hasProperties, let alias = publish.properties.integer(.topicAlias) {
            guard alias > 0, alias <= node.configuration.topicAliasMaximum else {
                return disconnect(.topicAliasInvalid, "topic alias \(alias)")
            }
            if topic.isEmpty {
                guard let known = inboundAliases[UInt16(alias)] else { return disconnect(.protocolError, "unknown topic alias \(alias)") }
                topic = known
            } else {
                inboundAliases[UInt16(alias)] = topic
            }
        }
        guard let packetID = publish.packetIdentifier else { return route(publish, topic: topic, packetID: nil) }
        if publish.qos == .exactlyOnce, awaitingRelease.contains(packetID) {
            // The terminal resent a QoS 2 PUBLISH it already handed over: acknowledge, do not route again.
            return write(.pubRec(MQTTAckPacket(packetIdentifier: packetID)), flush: true)
        }
        if inboundPending.count + awaitingRelease.count >= node.configuration.receiveMaximum {
            guard !version.hasProperties else { return disconnect(.receiveMaximumExceeded, "receive maximum exceeded") }
            // MQTT 3.1.1 has no receive maximum to announce; the same bound holds: reading
            // pauses while routes are pending (below), and QoS 2 exchanges the client never
            // releases end the connection.
            let unreleased = awaitingRelease.count + inboundPending.lazy.filter { $0.qos == .exactlyOnce }.count
            if publish.qos == .exactlyOnce, unreleased >= node.configuration.receiveMaximum {
                node.metrics.protocolErrors.increment()
                logger.info("closing: too many QoS 2 publishes without PUBREL")
                return close()
            }
        }
        route(publish, topic: topic, packetID: packetID)
    }

    private func route(_ publish: MQTTPublishPacket, topic: String, packetID: UInt16?) {
        node.metrics.published.increment()
        var refusal: MQTTReasonCode?
        if MQTTTopic.levelCount(topic) > node.configuration.maximumTopicLevels {
            refusal = .topicNameInvalid
        } else if !node.acl.mayPublish(topic, terminal: terminal) {
            refusal = .notAuthorized
        } else if version.hasProperties, publish.properties.integer(.payloadFormatIndicator) == 1,
            String(validating: publish.payload.readableBytesView, as: UTF8.self) == nil
        {
            refusal = .payloadFormatInvalid
        }
        if let refusal {
            node.metrics.publishesRefused.increment()
            logger.debug("publish refused", metadata: ["topic": "\(topic)", "reason": "\(refusal)"])
            guard let packetID else { return }
            // MQTT 3.1.1 cannot refuse a PUBLISH: it is acknowledged and dropped.
            let code: MQTTReasonCode = version.hasProperties ? refusal : .success
            let why =
                switch refusal {
                case .notAuthorized: "not allowed to publish to \(topic)"
                case .topicNameInvalid: "more than \(node.configuration.maximumTopicLevels) topic levels"
                default: "payload is not valid UTF-8"
                }
            inboundPending.append(
                InboundPublish(packetID: packetID, qos: publish.qos, reasonCode: code, reasonString: wantsProblemInformation ? why : nil))
            return flushInboundAcks()
        }
        let message = StoredMessage(
            published: topic, payload: publish.payload, qos: publish.qos, retain: publish.retain, properties: publish.properties,
            origin: terminal)
        guard let context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        routeStarted()
        guard let packetID else {
            node.route(message).hop(to: context.eventLoop).whenComplete { _ in loopBound.value.routeFinished() }
            return
        }
        inboundPending.append(InboundPublish(packetID: packetID, qos: publish.qos))
        node.route(message).hop(to: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            handler.routeFinished()
            guard let index = handler.inboundPending.firstIndex(where: { $0.packetID == packetID && $0.reasonCode == nil }) else { return }
            switch result {
            case .success:
                handler.inboundPending[index].reasonCode = .success
            case .failure(let error):
                handler.logger.warning("routing a publish failed", metadata: ["error": "\(error)"])
                // Not accepted: MQTT 5 says so; a 3.1.1 client learns it by the connection closing
                // and sends the message again.
                guard handler.version.hasProperties else { return handler.close() }
                handler.inboundPending[index].reasonCode = .implementationSpecificError
            }
            handler.flushInboundAcks()
        }
    }

    /// Publishes of this terminal waiting on Redis (any QoS). At the receive maximum the node
    /// stops reading from the terminal until half of them are done: a terminal that publishes
    /// faster than Redis takes it waits in its own socket, not in the node's memory.
    private var routesPending = 0

    private func routeStarted() {
        routesPending += 1
        if routesPending == node.configuration.receiveMaximum { setReading(false) }
    }

    private func routeFinished() {
        routesPending -= 1
        if routesPending == node.configuration.receiveMaximum / 2 { setReading(true) }
    }

    private func setReading(_ enabled: Bool) {
        guard let channel = context?.channel else { return }
        channel.setOption(ChannelOptions.autoRead, value: enabled).whenFailure { _ in }
    }

    /// Writes the PUBACK / PUBREC of every finished inbound publish at the head of the queue.
    private func flushInboundAcks() {
        var wrote = false
        while let first = inboundPending.first, let code = first.reasonCode {
            inboundPending.removeFirst()
            var ack = MQTTAckPacket(packetIdentifier: first.packetID, reasonCode: code)
            if let reason = first.reasonString { ack.properties.append(.reasonString, .string(reason)) }
            if first.qos == .exactlyOnce {
                // A refusing PUBREC ends the exchange; a successful one waits for PUBREL.
                if code.rawValue < 0x80 {
                    awaitingRelease.insert(first.packetID)
                    if sessionExpiry > 0 {
                        node.redis.fireAndForget([RedisCommand("SADD", node.keys.released(terminal), String(first.packetID))])
                    }
                }
                write(.pubRec(ack), flush: false)
            } else {
                write(.pubAck(ack), flush: false)
            }
            wrote = true
        }
        if wrote { flush() }
    }

    private func released(_ packetID: UInt16) {
        let known = awaitingRelease.remove(packetID) != nil
        if known, sessionExpiry > 0 {
            node.redis.fireAndForget([RedisCommand("SREM", node.keys.released(terminal), String(packetID))])
        }
        let code: MQTTReasonCode = known || !version.hasProperties ? .success : .packetIdentifierNotFound
        write(.pubComp(MQTTAckPacket(packetIdentifier: packetID, reasonCode: code)), flush: true)
    }

    /// Publishes the will (after its delay, unless the session came back on any node by then).
    private func publishWill() {
        guard let will = self.will?.message, let willDelay = self.will?.delay else { return }
        self.will = nil
        guard node.acl.mayPublish(will.topic, terminal: terminal) else { return }
        // The will waits no longer than the session lives; a takeover continues the session,
        // so a delayed will is not sent then.
        let delay = min(willDelay, sessionExpiry)
        let node = self.node
        guard delay > 0 else {
            node.metrics.willsPublished.increment()
            _ = node.route(will)
            return
        }
        guard !wasTakenOver, let context else { return }
        let routeKey = node.keys.route(terminal)
        context.eventLoop.scheduleTask(in: .seconds(Int64(delay))) {
            node.redis.pipelineFuture([RedisCommand("EXISTS", routeKey)]).whenSuccess { replies in
                guard replies.first?.int == 0 else { return }
                node.metrics.willsPublished.increment()
                _ = node.route(will)
            }
        }
    }

    // MARK: Subscriptions

    private func subscribeReceived(_ subscribe: MQTTSubscribePacket) {
        var identifier: UInt32?
        if version.hasProperties, let value = subscribe.properties.integer(.subscriptionIdentifier) {
            guard value > 0 else { return disconnect(.protocolError, "subscription identifier 0") }
            identifier = value
        }
        var codes: [MQTTReasonCode] = []
        var record: [String] = []
        var indexed: [String] = []
        var stored: [String] = []
        var retained: [(filter: String, subscription: Subscription)] = []
        var refused: [String] = []
        var overQuota = false
        // A filter given several times in one SUBSCRIBE: each gets its code, the last one's
        // options stand, and its work (index, Redis, retained messages) is done once.
        let lastIndex = Dictionary(subscribe.subscriptions.enumerated().map { ($1.topicFilter, $0) }) { _, later in later }
        for (position, requested) in subscribe.subscriptions.enumerated() {
            let filter = requested.topicFilter
            let shared = SharedFilter(filter)
            guard
                MQTTTopic.levelCount(filter) <= node.configuration.maximumTopicLevels,
                filter.hasPrefix("$share/") ? shared.map({ MQTTTopic.isValidFilter($0.filter) }) ?? false : MQTTTopic.isValidFilter(filter)
            else {
                codes.append(version.hasProperties ? .topicFilterInvalid : .v3SubscribeFailure)
                continue
            }
            if shared != nil && requested.options.noLocal && version.hasProperties {
                return disconnect(.protocolError, "no local on a shared subscription")
            }
            guard node.acl.maySubscribe(filter, terminal: terminal) else {
                codes.append(version.hasProperties ? .notAuthorized : .v3SubscribeFailure)
                refused.append(filter)
                continue
            }
            let subscription = Subscription(
                qos: requested.options.qos, noLocal: requested.options.noLocal, retainAsPublished: requested.options.retainAsPublished,
                identifier: identifier)
            guard isAutomatic(filter) || subscriptions[filter] != nil || subscriptions.count < node.configuration.maximumSubscriptions
            else {
                codes.append(version.hasProperties ? .quotaExceeded : .v3SubscribeFailure)
                overQuota = true
                continue
            }
            guard lastIndex[filter] == position else {
                // A later copy of this filter in the same packet decides.
                codes.append(MQTTReasonCode(min(requested.options.qos, MQTTQoS.exactlyOnce).rawValue))
                continue
            }
            if isAutomatic(filter) {
                // Kept with the session like any other (restored on reconnect), never indexed:
                // pushes and broadcasts reach every session without the index.
                setAutomatic(filter, subscription)
                record += [filter, subscription.encoded]
                codes.append(MQTTReasonCode(subscription.qos.rawValue))
                continue
            }
            let isNew = subscriptions.updateValue(subscription, forKey: filter) == nil
            if isNew, joinLocalIndex(filter) { indexed.append(filter) }
            record += [filter, subscription.encoded]
            if sessionExpiry > 0 && shared == nil { stored.append(filter) }
            switch requested.options.retainHandling {
            case .sendOnSubscribe where shared == nil: retained.append((filter, subscription))
            case .sendOnSubscribeIfNew where shared == nil && isNew: retained.append((filter, subscription))
            default: break
            }
            codes.append(MQTTReasonCode(subscription.qos.rawValue))
        }
        var commands: [RedisCommand] = []
        if !indexed.isEmpty { commands.append(node.indexUpdateCommand(adding: true, filters: indexed)) }
        if !record.isEmpty { commands.append(RedisCommand("HSET", [node.keys.subscriptions(terminal)] + record)) }
        if !stored.isEmpty { commands.append(node.storedSubscriptionsCommand(terminal: terminal, adding: true, filters: stored)) }
        var subackProperties: MQTTProperties = []
        if wantsProblemInformation, !refused.isEmpty {
            subackProperties.append(.reasonString, .string("not allowed to subscribe to " + refused.joined(separator: ", ")))
        } else if wantsProblemInformation, overQuota {
            subackProperties.append(.reasonString, .string("at most \(node.configuration.maximumSubscriptions) subscriptions per session"))
        }
        let suback = MQTTPacket.subAck(
            MQTTSubAckPacket(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes, properties: subackProperties))
        guard !commands.isEmpty, let context else { return write(suback, flush: true) }
        // SUBACK once the fleet index has the filters, so a publish sent after it finds them.
        let retainedFor = retained
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        node.redis.pipelineFuture(commands).hop(to: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            if case .failure(let error) = result {
                handler.logger.warning("recording subscriptions failed", metadata: ["error": "\(error)"])
            }
            handler.write(suback, flush: true)
            if !retainedFor.isEmpty { handler.sendRetained(for: retainedFor) }
        }
    }

    /// Sends the retained messages matching new subscriptions. A filter without wildcards is
    /// one HGET; a wildcard filter reads the whole retained hash (its cost grows with the
    /// number of retained topics; see README).
    private func sendRetained(for requested: [(filter: String, subscription: Subscription)]) {
        guard let context else { return }
        let wildcard = requested.contains { $0.filter.contains("+") || $0.filter.contains("#") }
        let command =
            wildcard
            ? RedisCommand("HVALS", node.keys.retained)
            : RedisCommand("HMGET", [node.keys.retained] + requested.map(\.filter))
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        node.redis.pipelineFuture([command]).hop(to: context.eventLoop).whenSuccess { replies in
            let handler = loopBound.value
            guard case .active = handler.phase else { return }
            let now = FleetClock.nowMillis()
            for entry in replies.first?.array?.compactMap(\.string) ?? [] {
                guard let message = StoredMessage.decode(entry), !message.isExpired(nowMillis: now) else { continue }
                var best: Subscription?
                var identifiers: [UInt32] = []
                for (filter, subscription) in requested where MQTTTopic.matches(filter: filter, topic: message.topic) {
                    if best == nil || subscription.qos > best!.qos { best = subscription }
                    if let id = subscription.identifier { identifiers.append(id) }
                }
                guard let best else { continue }
                let qos = min(best.qos, MQTTQoS(rawValue: min(message.qos, 2)) ?? .atMostOnce)
                guard qos == .atMostOnce || handler.inflight.count < handler.window else { continue }
                handler.send(
                    message, delivery: Delivery(qos: qos, retain: true, subscriptionIdentifiers: identifiers), dup: false, entry: nil,
                    tracked: false)
            }
            handler.flush()
        }
    }

    private func unsubscribeReceived(_ unsubscribe: MQTTUnsubscribePacket) {
        var codes: [MQTTReasonCode] = []
        var unindexed: [String] = []
        var stored: [String] = []
        for filter in unsubscribe.topicFilters {
            if isAutomatic(filter) {
                codes.append(automatic(filter) == nil ? .noSubscriptionExisted : .success)
                setAutomatic(filter, nil)
                continue
            }
            guard subscriptions.removeValue(forKey: filter) != nil else {
                codes.append(.noSubscriptionExisted)
                continue
            }
            codes.append(.success)
            if leaveLocalIndex(filter) { unindexed.append(filter) }
            if sessionExpiry > 0 && SharedFilter(filter) == nil { stored.append(filter) }
        }
        var commands = [RedisCommand("HDEL", [node.keys.subscriptions(terminal)] + unsubscribe.topicFilters)]
        if !unindexed.isEmpty { commands.append(node.indexUpdateCommand(adding: false, filters: unindexed)) }
        if !stored.isEmpty { commands.append(node.storedSubscriptionsCommand(terminal: terminal, adding: false, filters: stored)) }
        node.redis.fireAndForget(commands)
        write(.unsubAck(MQTTSubAckPacket(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: codes)), flush: true)
    }

    /// `push/<id>` and `broadcast`: every session has them; pushes reach them without the index.
    private func isAutomatic(_ filter: String) -> Bool {
        filter == "broadcast" || (filter.hasPrefix("push/") && filter.utf8.count == terminal.utf8.count + 5 && filter.hasSuffix(terminal))
    }

    /// The automatic subscription `filter` names (kept in two fields, not in `subscriptions`:
    /// an idle session then holds no dictionary at all).
    private func automatic(_ filter: String) -> Subscription? {
        guard isAutomatic(filter) else { return nil }
        return filter == "broadcast" ? broadcastSubscription : pushSubscription
    }

    private func setAutomatic(_ filter: String, _ subscription: Subscription?) {
        if filter == "broadcast" { broadcastSubscription = subscription } else { pushSubscription = subscription }
    }

    private var member: LocalSubscriptions.Member { LocalSubscriptions.Member(terminal: terminal, epoch: epoch) }

    /// Adds a filter to the node's local index; true when the fleet index must learn it.
    private func joinLocalIndex(_ filter: String) -> Bool {
        node.local.add(member, filter: filter)
    }

    private func leaveLocalIndex(_ filter: String) -> Bool {
        node.local.remove(member, filter: filter)
    }

    /// Takes all of this connection's subscriptions out of the node's index.
    private func leaveLocalIndex() {
        let unindexed = subscriptions.keys.filter { !isAutomatic($0) && leaveLocalIndex($0) }
        if !unindexed.isEmpty { node.redis.fireAndForget([node.indexUpdateCommand(adding: false, filters: unindexed)]) }
    }

    // MARK: Delivery

    /// Reads the next entries of the stored list when there may be some and the window has
    /// room for them (see ``StoredBacklog``): a backlog of any length drains in order, a
    /// window at a time, as acknowledgements free it.
    private func pumpStored() {
        guard case .active = phase, let context, context.channel.isWritable else { return }
        guard let read = backlog.nextRead(room: window - inflight.count, window: window) else { return }
        var commands = [RedisCommand("LRANGE", node.keys.queue(terminal), String(read.start), String(read.start + read.count - 1))]
        if read.withSent { commands.append(RedisCommand("HGETALL", node.keys.sent(terminal))) }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        node.redis.pipelineFuture(commands).hop(to: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            guard case .active = handler.phase else { return }
            switch result {
            case .success(let replies):
                let entries = replies[0].array?.compactMap(\.string) ?? []
                handler.readCompleted(read, entries: entries, sent: read.withSent ? SessionRegistration.packetIDs(replies[1]) : nil)
            case .failure(let error):
                handler.logger.warning("reading stored messages failed", metadata: ["error": "\(error)"])
                handler.backlog.readFailed()
            }
        }
    }

    /// Handles a list read: the new entries go out, then the next read if there may be more.
    private func readCompleted(_ read: StoredBacklog.Read, entries: [String], sent: [String: UInt16]?) {
        let messages = entries.map { StoredMessage.decode($0) }
        switch backlog.readCompleted(read, ids: messages.map { $0?.id }, sent: sent, now: .now()) {
        case .mismatch:
            logger.debug("stored list changed under the session: reading it from its head")
        case .entries(let fresh):
            deliverStored(entries[fresh], messages[fresh])
        }
        pumpStored()
    }

    /// Delivers stored entries in list order: each is sent (and stays in the list until
    /// acknowledged), removed (expired, unreadable, sent at QoS 0), or kept for a subscription
    /// the session lacks. Stops when the window is full or the socket does not take more; the
    /// rest is read again later.
    private func deliverStored(_ entries: ArraySlice<String>, _ messages: ArraySlice<StoredMessage?>) {
        var commands: [RedisCommand] = []
        var removed: [String] = []
        let now = FleetClock.nowMillis()
        let queueKey = node.keys.queue(terminal)
        for (entry, message) in zip(entries, messages) {
            guard let message else {
                logger.warning("dropping an unreadable stored entry")
                commands.append(RedisCommand("LREM", queueKey, "1", entry))
                continue
            }
            // Sent by this connection and waiting for its acknowledgement (a read from the head).
            if inflightIDs.contains(message.id) {
                backlog.handled(message.id)
                continue
            }
            if removing.contains(message.id) { continue }
            if message.isExpired(nowMillis: now) {
                node.metrics.expired.increment()
                commands.append(RedisCommand("LREM", queueKey, "1", entry))
                commands.append(RedisCommand("HDEL", node.keys.sent(terminal), message.id))
                if message.hasStatus { record(message.id, .expired) }
                backlog.removed(message.id)
                continue
            }
            // A terminal that does not read: the rest waits in Redis until it drains its socket.
            if context?.channel.isWritable == false {
                backlog.stopped()
                break
            }
            guard let delivery = delivery(for: message, shared: nil) else {
                // A message stored for a subscription the session no longer has (or its own,
                // under no local) is discarded; a push waits for the terminal to subscribe to
                // push/<id> again.
                if message.session == true {
                    commands.append(RedisCommand("LREM", queueKey, "1", entry))
                    backlog.removed(message.id)
                } else {
                    backlog.handled(message.id)
                }
                continue
            }
            if delivery.qos > .atMostOnce && inflight.count >= window {
                backlog.stopped()
                break
            }
            // Sent before and not acknowledged: again with DUP and, if still free, its packet id
            // (MQTT 4.4).
            let earlier = backlog.takeRedelivery(message.id)
            guard
                let packetID = send(
                    message, delivery: delivery, dup: earlier != nil, entry: entry, tracked: message.hasStatus, packetID: earlier)
            else {
                commands.append(RedisCommand("LREM", queueKey, "1", entry))
                if message.hasStatus { record(message.id, .dropped) }
                backlog.removed(message.id)
                continue
            }
            if delivery.qos == .atMostOnce {
                commands.append(RedisCommand("LREM", queueKey, "1", entry))
                removed.append(message.id)
                backlog.removed(message.id)
            } else {
                backlog.handled(message.id)
                if packetID != earlier { commands.append(RedisCommand("HSET", node.keys.sent(terminal), message.id, String(packetID))) }
            }
            if message.hasStatus { record(message.id, .delivered) }
        }
        flush()
        if !commands.isEmpty { removeFromList(commands, ids: removed) }
    }

    /// How `message` goes to this session, or nil when no subscription takes it. Overlapping
    /// subscriptions deliver once, at the highest QoS, with every subscription identifier
    /// (MQTT 5 3.3.4); a shared subscription delivers on its own.
    private func delivery(for message: StoredMessage, shared: String?) -> Delivery? {
        let published = MQTTQoS(rawValue: min(message.qos, 2)) ?? .atLeastOnce
        let retained = message.retain == true
        if let shared {
            guard let subscription = subscriptions[shared] else { return nil }
            return Delivery(
                qos: min(subscription.qos, published), retain: subscription.retainAsPublished && retained,
                subscriptionIdentifiers: subscription.identifier.map { [$0] } ?? [])
        }
        var best: MQTTQoS?
        var retain = false
        var identifiers: [UInt32] = []
        if let subscription = automatic(message.topic), !(subscription.noLocal && message.origin == terminal) {
            best = subscription.qos
            retain = subscription.retainAsPublished && retained
            if let identifier = subscription.identifier { identifiers.append(identifier) }
        }
        for (filter, subscription) in subscriptions where !filter.hasPrefix("$share/") {
            guard MQTTTopic.matches(filter: filter, topic: message.topic) else { continue }
            if subscription.noLocal && message.origin == terminal { continue }
            best = max(best ?? subscription.qos, subscription.qos)
            if subscription.retainAsPublished && retained { retain = true }
            if let identifier = subscription.identifier { identifiers.append(identifier) }
        }
        guard let best else { return nil }
        return Delivery(qos: min(best, published), retain: retain, subscriptionIdentifiers: identifiers)
    }

    /// Writes one PUBLISH (not flushed) and tracks it when QoS 1 or 2, under `packetID` if that
    /// is given and free. Returns the packet id used (0 for QoS 0), or nil when the message is
    /// larger than the client's maximum packet size: such a message is discarded as if it had
    /// been sent (MQTT 5 3.1.2.11.4).
    @discardableResult
    private func send(
        _ message: StoredMessage, delivery: Delivery, dup: Bool, entry: String?, tracked: Bool, packetID preferred: UInt16? = nil,
        payload shared: ByteBuffer? = nil
    ) -> UInt16? {
        let properties =
            version.hasProperties
            ? message.outboundProperties(subscriptionIdentifiers: delivery.subscriptionIdentifiers, nowMillis: FleetClock.nowMillis())
            : []
        let payload = shared ?? message.payloadBuffer()
        var publish = MQTTPublishPacket(
            topicName: message.topic, payload: payload, qos: delivery.qos, packetIdentifier: delivery.qos == .atMostOnce ? nil : 1,
            dup: dup, retain: delivery.retain, properties: properties)
        if clientMaximumPacketSize < Int.max {
            var scratch = ByteBuffer()
            try? MQTTPacket.publish(publish).write(to: &scratch, version: version)
            guard scratch.readableBytes <= clientMaximumPacketSize else {
                node.metrics.dropped.increment()
                logger.debug("message over the client's maximum packet size discarded", metadata: ["message": "\(message.id)"])
                return nil
            }
        }
        if clientTopicAliasMaximum > 0 {
            if let alias = outboundAliases[message.topic] {
                publish.topicName = ""
                publish.properties.append(.topicAlias, .twoByteInteger(alias))
            } else if outboundAliases.count < min(Int(clientTopicAliasMaximum), node.configuration.topicAliasMaximum) {
                let alias = UInt16(outboundAliases.count + 1)
                outboundAliases[message.topic] = alias
                publish.properties.append(.topicAlias, .twoByteInteger(alias))
            }
        }
        var id: UInt16 = 0
        if delivery.qos != .atMostOnce {
            if let preferred, preferred != 0, inflight[preferred] == nil {
                id = preferred
            } else {
                id = allocatePacketID()
            }
            publish.packetIdentifier = id
            inflight[id] = Inflight(message: message, entry: entry, tracked: tracked, qos: delivery.qos)
            inflightIDs.insert(message.id)
        }
        node.metrics.delivered.increment()
        write(.publish(publish), flush: false)
        return id
    }

    private func allocatePacketID() -> UInt16 {
        while true {
            let id = nextPacketID
            nextPacketID = nextPacketID == .max ? 1 : nextPacketID + 1
            if inflight[id] == nil { return id }
        }
    }

    /// Records this terminal's state for a message in its status (batched, see ``StatusRecorder``).
    private func record(_ messageID: String, _ state: MessageState) {
        node.status.record(messageID, terminal: terminal, state)
    }

    /// QoS 2, first half: the terminal has the message (PUBREC); PUBREL goes out and the
    /// packet id stays taken until PUBCOMP.
    private func received(_ ack: MQTTAckPacket) {
        guard var pending = inflight[ack.packetIdentifier], pending.qos == .exactlyOnce, !pending.released else {
            return protocolError("PUBREC for packet \(ack.packetIdentifier), which awaits no PUBREC")
        }
        if ack.reasonCode.rawValue >= 0x80 {
            // The terminal refused the message (MQTT 5): the exchange ends here, without
            // PUBREL, and the message is not kept for redelivery.
            inflight[ack.packetIdentifier] = nil
            inflightIDs.remove(pending.message.id)
            recordAcknowledged(pending)
            sendWaiting()
            pumpStored()
            return
        }
        pending.released = true
        inflight[ack.packetIdentifier] = pending
        write(.pubRel(MQTTAckPacket(packetIdentifier: ack.packetIdentifier)), flush: true)
        guard sessionExpiry > 0 else { return }
        // A persistent session keeps the exchange: the message leaves Redis now and a
        // reconnect (on any node) sends PUBREL again. A clean session's client forgets its
        // half of the exchange on reconnect, and many clients hand a QoS 2 message to the
        // application only on PUBREL: the message stays stored until PUBCOMP, so it is sent
        // again rather than lost.
        recordAcknowledged(pending)
        node.redis.fireAndForget([RedisCommand("SADD", node.keys.releasing(terminal), String(ack.packetIdentifier))])
    }

    /// QoS 2, second half: PUBCOMP frees the packet id.
    private func completed(_ packetID: UInt16) {
        guard let done = inflight[packetID], done.released else {
            return protocolError("PUBCOMP for packet \(packetID), which awaits no PUBCOMP")
        }
        inflight[packetID] = nil
        inflightIDs.remove(done.message.id)
        if sessionExpiry > 0 {
            node.redis.fireAndForget([RedisCommand("SREM", node.keys.releasing(terminal), String(packetID))])
        } else {
            recordAcknowledged(done)
        }
        if case .draining = phase, inflight.isEmpty { return finishDraining() }
        sendWaiting()
        pumpStored()
    }

    private func acknowledged(_ packetID: UInt16) {
        // A PUBACK for a packet id not in flight at QoS 1 (a late duplicate) is ignored.
        guard let done = inflight[packetID], done.qos == .atLeastOnce else {
            return logger.debug("PUBACK for a packet not in flight", metadata: ["packet": "\(packetID)", "phase": "\(phase)"])
        }
        inflight[packetID] = nil
        inflightIDs.remove(done.message.id)
        recordAcknowledged(done)
        if case .draining = phase, inflight.isEmpty { return finishDraining() }
        sendWaiting()
        pumpStored()
    }

    /// Removes an acknowledged message from Redis and records its state.
    private func recordAcknowledged(_ done: Inflight) {
        node.metrics.acknowledged.increment()
        var commands: [RedisCommand] = []
        if let entry = done.entry {
            commands.append(RedisCommand("LREM", node.keys.queue(terminal), "1", entry))
            commands.append(RedisCommand("HDEL", node.keys.sent(terminal), done.message.id))
            backlog.removed(done.message.id)
        }
        // Acknowledged after its ttl passed: the status already counts it expired (the
        // control node settles expiry when the status is read), and it stays so.
        if done.tracked { record(done.message.id, done.message.isExpired(nowMillis: FleetClock.nowMillis()) ? .expired : .acknowledged) }
        if !commands.isEmpty { removeFromList(commands, ids: done.entry == nil ? [] : [done.message.id]) }
    }

    /// Sends `commands`, which take the messages `ids` out of the list; until Redis confirms,
    /// list reads skip them.
    private func removeFromList(_ commands: [RedisCommand], ids: [String]) {
        guard !ids.isEmpty, let context else { return node.redis.fireAndForget(commands) }
        removing.formUnion(ids)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        node.redis.pipelineFuture(commands).hop(to: context.eventLoop).whenComplete { _ in
            loopBound.value.removing.subtract(ids)
        }
    }

    /// Told by a `wake` event that carries the new entries themselves. A session that has
    /// handled everything older delivers them at once, without reading the list (they are
    /// the list's newest entries); any other reads the list (``StoredBacklog``).
    func wake(entries: [String]) {
        guard case .active = phase, backlog.mayDeliverFromWake(now: .now()) else { return wake() }
        deliverStored(entries[...], entries.map { StoredMessage.decode($0) }[...])
        pumpStored()
    }

    /// Told by a `wake` event: the terminal's list has new entries.
    func wake() {
        switch phase {
        case .active:
            backlog.woken()
            pumpStored()
        // The registration read the list; entries stored after that are read once it completes.
        case .registering: backlog.woken()
        case .awaitingConnect, .draining, .stopped, .closed: break
        }
    }

    /// Delivers a message that was not stored (online-only unicast, broadcast, topic push)
    /// if one of the session's subscriptions matches its topic. Before the stored backlog went
    /// out, live messages wait (bounded) so they never overtake it.
    ///
    /// `payload`: the message's payload decoded once for all the sessions it goes to.
    ///
    /// `countReach`: a broadcast, whose status counts the terminals it reached.
    func deliverLive(_ message: StoredMessage, tracked: Bool, countReach: Bool = false, payload: ByteBuffer? = nil) {
        switch phase {
        case .registering:
            guard earlyDeliveries.count < 4 * node.configuration.inflightWindow else {
                node.metrics.dropped.increment()
                if tracked { record(message.id, .dropped) }
                return
            }
            earlyDeliveries.append((message, tracked, false, nil))
            return
        case .active:
            break
        case .awaitingConnect, .draining, .stopped, .closed:
            return
        }
        var message = message
        // Unicast events name the terminals and leave the topic to each of them.
        if message.topic.isEmpty { message.topic = "push/\(terminal)" }
        guard let delivery = delivery(for: message, shared: nil) else { return }
        // Online-only messages are not kept for a terminal that does not keep up.
        if context?.channel.isWritable == false || (delivery.qos > .atMostOnce && inflight.count >= liveLimit) {
            node.metrics.dropped.increment()
            if tracked { record(message.id, .dropped) }
            return
        }
        let sent = send(message, delivery: delivery, dup: false, entry: nil, tracked: tracked, payload: payload) != nil
        flush()
        if tracked { record(message.id, sent ? .delivered : .dropped) }
        if sent && countReach { node.status.countReach(message.id) }
    }

    /// Sends waiting routed messages while the window has room and the socket takes them.
    private func sendWaiting() {
        guard !waiting.isEmpty, case .active = phase else { return }
        var sent = false
        while let first = waiting.first, inflight.count < window, context?.channel.isWritable == true {
            waiting.removeFirst()
            guard let delivery = delivery(for: first.message, shared: first.shared) else { continue }
            sent = send(first.message, delivery: delivery, dup: false, entry: nil, tracked: false) != nil || sent
        }
        if sent { flush() }
    }

    /// Unacknowledged messages beyond the stored window that live messages may add: a little
    /// slack for pushes, none past a receive maximum the client set.
    private var liveLimit: Int {
        clientReceiveMaximum < Int(UInt16.max) ? window : 4 * window
    }

    /// Delivers a message a terminal published, routed here by the fleet index (`shared`:
    /// the shared subscription this session was picked for). For a persistent session a QoS
    /// 1/2 message is written to Redis while in flight, so a reconnect on any node gets it
    /// again; when the session cannot take it now it waits there instead of being dropped.
    func deliverPublished(_ message: StoredMessage, shared: String?, payload: ByteBuffer? = nil) {
        switch phase {
        case .registering:
            guard earlyDeliveries.count < 4 * node.configuration.inflightWindow else {
                node.metrics.dropped.increment()
                return
            }
            earlyDeliveries.append((message, false, true, shared))
            return
        case .active:
            break
        case .awaitingConnect, .draining, .stopped, .closed:
            return
        }
        guard let delivery = delivery(for: message, shared: shared) else { return }
        let keep = sessionExpiry > 0 && delivery.qos > .atMostOnce && shared == nil
        if !keep, delivery.qos > .atMostOnce, !waiting.isEmpty || context?.channel.isWritable == false || inflight.count >= window {
            // Behind the ones already waiting, in order; beyond the cap the message is dropped.
            guard waiting.count < node.configuration.offlineQueueCap else {
                node.metrics.dropped.increment()
                return
            }
            waiting.append((message, shared))
            return
        }
        if keep { return deliverKept(message, delivery: delivery, payload: payload) }
        if context?.channel.isWritable == false || (delivery.qos > .atMostOnce && inflight.count >= liveLimit) {
            node.metrics.dropped.increment()
            return
        }
        send(message, delivery: delivery, dup: false, entry: nil, tracked: false, payload: payload)
        flush()
    }

    /// A routed QoS 1/2 message for a persistent session: stored in the terminal's list first.
    /// When the session has handled everything before it in the list, it goes out at once;
    /// otherwise it waits behind the entries not read yet and is read in order.
    private func deliverKept(_ message: StoredMessage, delivery: Delivery, payload: ByteBuffer?) {
        var stored = message
        stored.session = true
        let entry = stored.encoded()
        let ttl =
            message.expiresAt > 0
            ? max(1, message.expiresAt - FleetClock.nowMillis()) : Int64(node.configuration.maximumSessionExpiry) * 1000
        var commands = [
            FleetScripts.enqueue.command(
                keys: [node.keys.queue(terminal)], arguments: [entry, String(node.configuration.offlineQueueCap), String(ttl), "0"])
        ]
        if backlog.caughtUp, !backlog.isReading, context?.channel.isWritable == true, inflight.count < window,
            let packetID = send(message, delivery: delivery, dup: false, entry: entry, tracked: false, payload: payload)
        {
            backlog.handled(message.id)
            commands.append(RedisCommand("HSET", node.keys.sent(terminal), message.id, String(packetID)))
            node.redis.fireAndForget(commands)
            return flush()
        }
        node.redis.fireAndForget(commands)
        backlog.woken()
        pumpStored()
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
        if inflight.isEmpty { return finishDraining() }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: timeout) {
            if case .draining = loopBound.value.phase { loopBound.value.finishDraining() }
        }
    }

    private func finishDraining() {
        if version.hasProperties {
            let reason = drainReason == .useAnotherServer ? "this node sheds load: connect again" : "this node is shutting down"
            write(serverDisconnect(drainReason, reason), flush: true)
        }
        close()
    }

    /// Watches the keep alive through the event loop's sweeper.
    private func startKeepAliveTimer() {
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
    private func unregisterRoute() {
        guard !terminal.isEmpty else { return }
        let keys = node.keys
        let command = FleetScripts.unregister.command(
            keys: [
                keys.route(terminal), keys.session(terminal), keys.subscriptions(terminal), keys.released(terminal),
                keys.releasing(terminal),
            ],
            arguments: [epoch, String(sessionExpiry)]
        )
        let filters = subscriptions.keys.filter { !isAutomatic($0) && SharedFilter($0) == nil }
        guard persistentAtConnect, sessionExpiry == 0, !filters.isEmpty else { return node.redis.fireAndForget([command]) }
        let node = self.node
        let terminal = self.terminal
        node.redis.pipelineFuture([command]).whenSuccess { replies in
            guard replies.first?.int == 1 else { return }
            node.redis.fireAndForget([node.storedSubscriptionsCommand(terminal: terminal, adding: false, filters: filters)])
        }
    }

    /// Flushes now, or at the end of the socket read being handled.
    private func flush() {
        if reading {
            flushDeferred = true
        } else {
            context?.flush()
        }
    }

    private func write(_ packet: MQTTPacket, flush: Bool) {
        guard let context else { return }
        context.write(wrapOutboundOut(packet), promise: nil)
        if flush { self.flush() }
    }

    private func close() {
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

/// A first-in first-out queue that allocates nothing while empty (most connections never
/// queue anything; NIO's `CircularBuffer` reserves 16 elements up front).
struct FIFO<Element> {
    private var items: [Element] = []
    private var head = 0

    var isEmpty: Bool { head == items.count }
    var count: Int { items.count - head }
    var first: Element? { isEmpty ? nil : items[head] }

    mutating func append(_ element: Element) { items.append(element) }

    mutating func removeFirst() {
        head += 1
        if head == items.count {
            items = []
            head = 0
        } else if head >= 64 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}
