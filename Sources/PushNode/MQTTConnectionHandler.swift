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
        case closed
    }

    /// A QoS 1 message written to the terminal and not yet acknowledged.
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
    private var logger: Logger

    private var version = MQTTProtocolVersion.v3_1_1
    private var terminal = ""
    private var epoch = ""
    private var connectedAt: Int64 = 0
    private var cleanStart = true
    private var keepAlive: TimeAmount = .zero
    private var lastReceived = NIODeadline.now()
    private var timer: RepeatedTask?
    private var connectDeadline: Scheduled<Void>?
    private var handle: SessionHandle?

    /// Topic filter -> granted QoS, including the automatic `push/<id>` and `broadcast`.
    private var subscriptions: [String: MQTTQoS] = [:]
    private var inflight: [UInt16: Inflight] = [:]
    private var inflightIDs: Set<String> = []
    private var nextPacketID: UInt16 = 1
    /// Packets that arrived while the session was being registered.
    private var earlyPackets: [MQTTPacket] = []
    /// Live messages that arrived before the stored backlog was delivered.
    private var earlyDeliveries: [(message: StoredMessage, tracked: Bool)] = []
    private var refilling = false
    private var refillAgain = false

    init(node: PushNodeContext, encoder: MQTTPacketEncoder) {
        self.node = node
        self.encoder = encoder
        self.logger = node.logger
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        connectDeadline = context.eventLoop.scheduleTask(in: .seconds(Int64(node.configuration.connectTimeout))) {
            if case .awaitingConnect = loopBound.value.phase { loopBound.value.close() }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let packet = unwrapInboundIn(data)
        lastReceived = .now()
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
        case .closed:
            break
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, refillAgain, case .active = phase { refill() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? MQTTCodecError {
            node.metrics.protocolErrors.increment()
            logger.info("closing connection after a bad packet", metadata: ["error": "\(error)"])
            if version.hasProperties, case .active = phase {
                write(.disconnect(MQTTDisconnectPacket(reasonCode: error.reasonCode)), flush: true)
            }
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
        }
        close()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasActive: Bool
        switch phase {
        case .active, .draining: wasActive = true
        default: wasActive = false
        }
        if case .registering = phase { unregisterRoute() }
        phase = .closed
        timer?.cancel()
        connectDeadline?.cancel()
        if wasActive {
            node.metrics.connections.decrement()
            unregisterRoute()
        }
        if let handle { node.registry.remove(handle) }
        context.fireChannelInactive()
    }

    // MARK: CONNECT

    private func connectReceived(_ connect: MQTTConnectPacket) {
        connectDeadline?.cancel()
        guard connect.protocolVersion.isSupported else {
            // Answer in the 3.1.1 format: a client of an unknown version can parse that.
            return refuse(.v3UnacceptableProtocolVersion, v5: .unsupportedProtocolVersion)
        }
        version = connect.protocolVersion
        encoder.version = version
        cleanStart = connect.cleanStart

        var clientID = connect.clientIdentifier
        var assigned: String?
        if clientID.isEmpty {
            guard node.configuration.allowAnonymous, connect.cleanStart || version.hasProperties else {
                return refuse(.v3IdentifierRejected, v5: .clientIdentifierNotValid)
            }
            clientID = "auto-" + FleetClock.newEpoch()
            assigned = clientID
        }
        guard TerminalID.isValid(clientID) else { return refuse(.v3IdentifierRejected, v5: .clientIdentifierNotValid) }

        var issuedAt = ""
        if let password = connect.passwordString, !password.isEmpty {
            guard connect.username == nil || connect.username == clientID else {
                return refuse(.v3NotAuthorized, v5: .notAuthorized)
            }
            switch node.credentials.verify(terminal: clientID, password: password, now: FleetClock.nowSeconds()) {
            case .success(let verified): issuedAt = String(verified.issuedAt)
            case .failure(let failure):
                logger.info("credential refused", metadata: ["terminal": "\(clientID)", "reason": "\(failure)"])
                return refuse(.v3NotAuthorized, v5: .notAuthorized)
            }
        } else if !node.configuration.allowAnonymous {
            return refuse(.v3BadUserNameOrPassword, v5: .badUserNameOrPassword)
        }

        terminal = clientID
        epoch = FleetClock.newEpoch()
        connectedAt = FleetClock.nowMillis()
        logger[metadataKey: "terminal"] = "\(terminal)"
        keepAlive = .seconds(Int64(connect.keepAlive))
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
        let keys = node.keys
        let command = FleetScripts.register.command(
            keys: [
                keys.route(terminal), keys.session(terminal), keys.subscriptions(terminal), keys.revoked(terminal), keys.queue(terminal),
                keys.sent(terminal),
            ],
            arguments: [
                node.nodeID, epoch, String(connectedAt), cleanStart ? "1" : "0", issuedAt,
                String(node.configuration.inflightWindow),
            ]
        )
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        node.redis.pipelineFuture([command]).hop(to: context.eventLoop).whenComplete { result in
            loopBound.value.registered(result.flatMap { replies in Result { try replies[0].throwingError() } }, assignedID: assignedID)
        }
    }

    private func registered(_ result: Result<RedisReply, any Error>, assignedID: String?) {
        guard case .registering = phase else { return }
        let parts: [RedisReply]
        switch result {
        case .failure(let error):
            logger.warning("session registration failed", metadata: ["error": "\(error)"])
            return refuse(.v3ServerUnavailable, v5: .serverUnavailable)
        case .success(let reply):
            guard let array = reply.array, let status = array.first?.string else {
                logger.warning("unexpected session registration reply", metadata: ["reply": "\(reply)"])
                return refuse(.v3ServerUnavailable, v5: .serverUnavailable)
            }
            guard status == "ok", array.count == 7 else {
                logger.info("credential revoked")
                return refuse(.v3NotAuthorized, v5: .notAuthorized)
            }
            parts = array
        }
        let oldNode = parts[1].string ?? ""
        let oldEpoch = parts[2].string ?? ""
        let sessionPresent = !cleanStart && parts[3].int == 1
        // Takeover: close the previous connection of this terminal wherever it is.
        let handle = SessionHandle(
            terminal: terminal,
            epoch: epoch,
            connectedAt: connectedAt,
            handler: NIOLoopBound(self, eventLoop: context!.eventLoop)
        )
        self.handle = handle
        if let previous = node.registry.register(handle) {
            previous.execute { $0.takenOver() }
        } else if !oldNode.isEmpty, oldNode != node.nodeID {
            let kick = NodeEvent(kind: .kick, terminals: [terminal], epoch: oldEpoch)
            node.redis.fireAndForget([RedisCommand("SPUBLISH", node.keys.nodeChannel(oldNode), kick.encoded())])
        }

        subscriptions = ["push/\(terminal)": .atLeastOnce, "broadcast": .atLeastOnce]
        for (filter, qos) in parts[4].pairs ?? [:] {
            if let qos = UInt8(qos).flatMap(MQTTQoS.init(rawValue:)) { subscriptions[filter] = qos }
        }

        var properties: MQTTProperties = []
        if version.hasProperties {
            if let assignedID { properties.append(.assignedClientIdentifier, .string(assignedID)) }
            properties.append(.maximumQoS, .byte(2))
            properties.append(.retainAvailable, .byte(0))
            properties.append(.maximumPacketSize, .fourByteInteger(UInt32(node.configuration.maximumPacketSize)))
            properties.append(.sharedSubscriptionAvailable, .byte(0))
            properties.append(.subscriptionIdentifierAvailable, .byte(0))
            properties.append(.topicAliasMaximum, .twoByteInteger(0))
        }
        write(.connAck(MQTTConnAckPacket(sessionPresent: sessionPresent, reasonCode: .success, properties: properties)), flush: false)
        phase = .active
        node.metrics.connectsAccepted.increment()
        node.metrics.connections.increment()
        startKeepAliveTimer()

        let queue = parts[5].array?.compactMap(\.string) ?? []
        let sent = Set(parts[6].array?.compactMap(\.string) ?? [])
        let wokenWhileRegistering = refillAgain
        refillAgain = false
        deliverStored(queue, previouslySent: sent)
        if wokenWhileRegistering || (refillAgain && inflight.count < node.configuration.inflightWindow) { refill() }
        let live = earlyDeliveries
        earlyDeliveries = []
        for (message, tracked) in live { deliverLive(message, tracked: tracked) }

        let early = earlyPackets
        earlyPackets = []
        for packet in early { process(packet) }
        context?.flush()
    }

    private func refuse(_ v3: MQTTReasonCode, v5: MQTTReasonCode) {
        node.metrics.connectsRefused.increment()
        let code = version.hasProperties ? v5 : v3
        write(.connAck(MQTTConnAckPacket(sessionPresent: false, reasonCode: code)), flush: true)
        close()
    }

    // MARK: Packets from an active session

    private func process(_ packet: MQTTPacket) {
        switch packet {
        case .publish(let publish):
            // Terminal publishes are not routed yet: refuse them as the ACL would.
            switch publish.qos {
            case .atMostOnce: break
            case .atLeastOnce:
                write(
                    .pubAck(
                        MQTTAckPacket(
                            packetIdentifier: publish.packetIdentifier!, reasonCode: version.hasProperties ? .notAuthorized : .success)),
                    flush: true)
            case .exactlyOnce:
                write(
                    .pubRec(
                        MQTTAckPacket(
                            packetIdentifier: publish.packetIdentifier!, reasonCode: version.hasProperties ? .notAuthorized : .success)),
                    flush: true)
            }
        case .pubRel(let ack):
            write(.pubComp(MQTTAckPacket(packetIdentifier: ack.packetIdentifier)), flush: true)
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
        case .disconnect:
            close()
        case .connect:
            protocolError("second CONNECT")
        case .connAck, .subAck, .unsubAck, .pingResp, .auth:
            protocolError("unexpected packet type \(packet.typeCode)")
        }
    }

    private func protocolError(_ reason: String) {
        node.metrics.protocolErrors.increment()
        logger.info("protocol error", metadata: ["reason": "\(reason)"])
        if version.hasProperties { write(.disconnect(MQTTDisconnectPacket(reasonCode: .protocolError)), flush: true) }
        close()
    }

    private func mayAccess(_ filter: String) -> Bool {
        if node.configuration.allowAnonymous { return true }
        if filter == "push/\(terminal)" || filter == "broadcast" { return true }
        return node.configuration.publicTopicFilters.contains(filter)
    }

    private func subscribeReceived(_ subscribe: MQTTSubscribePacket) {
        var codes: [MQTTReasonCode] = []
        var record: [String] = []
        for subscription in subscribe.subscriptions {
            let filter = subscription.topicFilter
            guard MQTTTopic.isValidFilter(filter) else {
                codes.append(version.hasProperties ? .topicFilterInvalid : .v3SubscribeFailure)
                continue
            }
            guard mayAccess(filter) else {
                codes.append(version.hasProperties ? .notAuthorized : .v3SubscribeFailure)
                continue
            }
            let granted = subscription.options.qos
            subscriptions[filter] = granted
            record += [filter, String(granted.rawValue)]
            codes.append(MQTTReasonCode(granted.rawValue))
        }
        if !record.isEmpty {
            node.redis.fireAndForget([RedisCommand("HSET", [node.keys.subscriptions(terminal)] + record)])
        }
        write(.subAck(MQTTSubAckPacket(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes)), flush: true)
    }

    private func unsubscribeReceived(_ unsubscribe: MQTTUnsubscribePacket) {
        var codes: [MQTTReasonCode] = []
        for filter in unsubscribe.topicFilters {
            codes.append(subscriptions.removeValue(forKey: filter) == nil ? .noSubscriptionExisted : .success)
        }
        node.redis.fireAndForget([RedisCommand("HDEL", [node.keys.subscriptions(terminal)] + unsubscribe.topicFilters)])
        write(.unsubAck(MQTTSubAckPacket(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: codes)), flush: true)
    }

    // MARK: Delivery

    /// Delivers stored entries in list order, skipping those already in flight. When a full
    /// page was read and some of it left the list (sent at QoS 0, expired), more may be
    /// waiting behind it: `refillAgain` asks for the next page.
    private func deliverStored(_ entries: [String], previouslySent: Set<String>) {
        var commands: [RedisCommand] = []
        let now = FleetClock.nowMillis()
        let queueKey = node.keys.queue(terminal)
        for entry in entries {
            guard let message = StoredMessage.decode(entry) else {
                logger.warning("dropping an unreadable stored entry")
                commands.append(RedisCommand("LREM", queueKey, "1", entry))
                continue
            }
            if inflightIDs.contains(message.id) { continue }
            if message.isExpired(nowMillis: now) {
                node.metrics.expired.increment()
                commands.append(RedisCommand("LREM", queueKey, "1", entry))
                commands.append(RedisCommand("SREM", node.keys.sent(terminal), message.id))
                commands.append(transition(message.id, .expired))
                continue
            }
            // A terminal that does not read: the rest waits in Redis until it drains its socket.
            if context?.channel.isWritable == false {
                refillAgain = true
                break
            }
            // The terminal's own subscription caps the QoS (MQTT 3.1.1 3.8.4); without one
            // (it unsubscribed from push/<id>) the message waits in Redis.
            guard let granted = grantedQoS(for: message.topic) else { continue }
            let qos = min(granted, MQTTQoS(rawValue: min(message.qos, 2)) ?? .atLeastOnce)
            if qos > .atMostOnce && inflight.count >= node.configuration.inflightWindow {
                refillAgain = true
                break
            }
            send(message, qos: qos, dup: previouslySent.contains(message.id), entry: entry, tracked: true)
            if qos == .atMostOnce {
                commands.append(RedisCommand("LREM", queueKey, "1", entry))
            } else {
                commands.append(RedisCommand("SADD", node.keys.sent(terminal), message.id))
            }
            commands.append(transition(message.id, .delivered))
        }
        context?.flush()
        if !commands.isEmpty { node.redis.fireAndForget(commands) }
        if entries.count >= node.configuration.inflightWindow && commands.contains(where: { $0.name == "LREM" }) {
            refillAgain = true
        }
    }

    /// Writes one PUBLISH (not flushed) and tracks it when QoS 1.
    private func send(_ message: StoredMessage, qos: MQTTQoS, dup: Bool, entry: String?, tracked: Bool) {
        var packetID: UInt16?
        if qos != .atMostOnce {
            let id = allocatePacketID()
            packetID = id
            inflight[id] = Inflight(message: message, entry: entry, tracked: tracked, qos: qos)
            inflightIDs.insert(message.id)
        }
        var properties: MQTTProperties = []
        if version.hasProperties {
            properties.append(.userProperty, .stringPair("message-id", message.id))
            if message.expiresAt > 0 {
                let remaining = max(1, (message.expiresAt - FleetClock.nowMillis() + 999) / 1000)
                properties.append(.messageExpiryInterval, .fourByteInteger(UInt32(clamping: remaining)))
            }
        }
        var payload = context?.channel.allocator.buffer(capacity: message.payload.utf8.count) ?? ByteBuffer()
        payload.writeBytes(message.payloadBytes)
        let publish = MQTTPublishPacket(
            topicName: message.topic, payload: payload, qos: qos, packetIdentifier: packetID, dup: dup, properties: properties)
        node.metrics.delivered.increment()
        write(.publish(publish), flush: false)
    }

    private func allocatePacketID() -> UInt16 {
        while true {
            let id = nextPacketID
            nextPacketID = nextPacketID == .max ? 1 : nextPacketID + 1
            if inflight[id] == nil { return id }
        }
    }

    private func transition(_ messageID: String, _ state: MessageState) -> RedisCommand {
        FleetScripts.transition.command(
            keys: [node.keys.messageStatus(messageID), node.keys.messageTargets(messageID)],
            arguments: [terminal, state.rawValue]
        )
    }

    /// QoS 2, first half: the terminal has the message (PUBREC). It counts as acknowledged
    /// and leaves Redis now; the packet id stays taken until PUBCOMP.
    private func received(_ ack: MQTTAckPacket) {
        guard var pending = inflight[ack.packetIdentifier], pending.qos == .exactlyOnce, !pending.released else {
            return protocolError("PUBREC for packet \(ack.packetIdentifier), which awaits no PUBREC")
        }
        pending.released = true
        inflight[ack.packetIdentifier] = pending
        write(.pubRel(MQTTAckPacket(packetIdentifier: ack.packetIdentifier)), flush: true)
        // A refusing reason code (MQTT 5, >= 0x80) still ends the exchange: the terminal
        // will not take this message, so it is not kept for redelivery.
        recordAcknowledged(pending)
    }

    /// QoS 2, second half: PUBCOMP frees the packet id.
    private func completed(_ packetID: UInt16) {
        guard let done = inflight[packetID], done.released else {
            return protocolError("PUBCOMP for packet \(packetID), which awaits no PUBCOMP")
        }
        inflight[packetID] = nil
        inflightIDs.remove(done.message.id)
        if case .draining = phase, inflight.isEmpty { return finishDraining() }
        if refillAgain { refill() }
    }

    private func acknowledged(_ packetID: UInt16) {
        // A PUBACK for a packet id not in flight at QoS 1 (a late duplicate) is ignored.
        guard let done = inflight[packetID], done.qos == .atLeastOnce else { return }
        inflight[packetID] = nil
        inflightIDs.remove(done.message.id)
        recordAcknowledged(done)
        if case .draining = phase, inflight.isEmpty { return finishDraining() }
        if refillAgain { refill() }
    }

    /// Removes an acknowledged message from Redis and records its state.
    private func recordAcknowledged(_ done: Inflight) {
        node.metrics.acknowledged.increment()
        var commands: [RedisCommand] = []
        if let entry = done.entry {
            commands.append(RedisCommand("LREM", node.keys.queue(terminal), "1", entry))
            commands.append(RedisCommand("SREM", node.keys.sent(terminal), done.message.id))
        }
        if done.tracked { commands.append(transition(done.message.id, .acknowledged)) }
        if !commands.isEmpty { node.redis.fireAndForget(commands) }
    }

    /// Told by a `wake` event: the terminal's list has new entries.
    func wake() {
        switch phase {
        case .active: refill()
        // The registration already read the list; entries stored after that are read once it completes.
        case .registering: refillAgain = true
        case .awaitingConnect, .draining, .closed: break
        }
    }

    private func refill() {
        guard !refilling else {
            refillAgain = true
            return
        }
        guard let context else { return }
        refilling = true
        refillAgain = false
        let commands = [
            RedisCommand("LRANGE", node.keys.queue(terminal), "0", String(node.configuration.inflightWindow - 1)),
            RedisCommand("SMEMBERS", node.keys.sent(terminal)),
        ]
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        node.redis.pipelineFuture(commands).hop(to: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            handler.refilling = false
            guard case .active = handler.phase else { return }
            switch result {
            case .success(let replies):
                let entries = replies[0].array?.compactMap(\.string) ?? []
                let sent = Set(replies[1].array?.compactMap(\.string) ?? [])
                handler.deliverStored(entries, previouslySent: sent)
            case .failure(let error):
                handler.logger.warning("reading stored messages failed", metadata: ["error": "\(error)"])
            }
            let writable = handler.context?.channel.isWritable ?? false
            if handler.refillAgain, writable, handler.inflight.count < handler.node.configuration.inflightWindow { handler.refill() }
        }
    }

    /// Delivers a message that was not stored (online-only unicast, broadcast, topic push)
    /// if one of the session's subscriptions matches its topic. Before the stored backlog went
    /// out, live messages wait (bounded) so they never overtake it.
    func deliverLive(_ message: StoredMessage, tracked: Bool) {
        switch phase {
        case .registering:
            guard earlyDeliveries.count < 4 * node.configuration.inflightWindow else {
                node.metrics.dropped.increment()
                if tracked { node.redis.fireAndForget([transition(message.id, .dropped)]) }
                return
            }
            earlyDeliveries.append((message, tracked))
            return
        case .active:
            break
        case .awaitingConnect, .draining, .closed:
            return
        }
        var message = message
        // Unicast events name the terminals and leave the topic to each of them.
        if message.topic.isEmpty { message.topic = "push/\(terminal)" }
        guard let granted = grantedQoS(for: message.topic) else { return }
        let qos = min(granted, MQTTQoS(rawValue: min(message.qos, 2)) ?? .atLeastOnce)
        // Online-only messages are not kept for a terminal that does not keep up.
        if context?.channel.isWritable == false || (qos > .atMostOnce && inflight.count >= 4 * node.configuration.inflightWindow) {
            node.metrics.dropped.increment()
            if tracked { node.redis.fireAndForget([transition(message.id, .dropped)]) }
            return
        }
        send(message, qos: qos, dup: false, entry: nil, tracked: tracked)
        context?.flush()
        if tracked { node.redis.fireAndForget([transition(message.id, .delivered)]) }
    }

    private func grantedQoS(for topic: String) -> MQTTQoS? {
        var best: MQTTQoS?
        for (filter, qos) in subscriptions where MQTTTopic.matches(filter: filter, topic: topic) {
            best = max(best ?? qos, qos)
        }
        return best
    }

    // MARK: Lifecycle

    /// A newer connection of the same terminal registered: leave without touching the route.
    func takenOver() {
        switch phase {
        case .active, .draining: break
        default: return close()
        }
        logger.info("session taken over")
        if version.hasProperties { write(.disconnect(MQTTDisconnectPacket(reasonCode: .sessionTakenOver)), flush: true) }
        close()
    }

    /// Closes the connection if it still has `epoch` (kick from another node, revocation).
    func kick(epoch: String) {
        guard epoch.isEmpty || epoch == self.epoch else { return }
        takenOver()
    }

    /// Node shutdown: stop delivering, let in-flight messages be acknowledged (up to
    /// `timeout`) so the terminal does not get them twice elsewhere, then DISCONNECT 0x8B
    /// (MQTT 5) and close. What is not acknowledged stays stored for the next connection.
    func drain(timeout: TimeAmount) {
        guard case .active = phase, let context else { return close() }
        phase = .draining
        if inflight.isEmpty { return finishDraining() }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: timeout) {
            if case .draining = loopBound.value.phase { loopBound.value.finishDraining() }
        }
    }

    private func finishDraining() {
        if version.hasProperties { write(.disconnect(MQTTDisconnectPacket(reasonCode: .serverShuttingDown)), flush: true) }
        close()
    }

    private func startKeepAliveTimer() {
        guard keepAlive > .zero, let context else { return }
        let limit = TimeAmount.nanoseconds(keepAlive.nanoseconds * 3 / 2)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            let handler = loopBound.value
            if NIODeadline.now() - handler.lastReceived > limit {
                handler.logger.info("keepalive expired")
                if handler.version.hasProperties {
                    handler.write(.disconnect(MQTTDisconnectPacket(reasonCode: .keepAliveTimeout)), flush: true)
                }
                handler.close()
            }
        }
    }

    private func unregisterRoute() {
        guard !terminal.isEmpty else { return }
        let keys = node.keys
        node.redis.fireAndForget([
            FleetScripts.unregister.command(
                keys: [keys.route(terminal), keys.session(terminal), keys.subscriptions(terminal)],
                arguments: [epoch, cleanStart ? "1" : "0"]
            )
        ])
    }

    private func write(_ packet: MQTTPacket, flush: Bool) {
        guard let context else { return }
        if flush {
            context.writeAndFlush(wrapOutboundOut(packet), promise: nil)
        } else {
            context.write(wrapOutboundOut(packet), promise: nil)
        }
    }

    private func close() {
        guard let context else { return }
        if case .closed = phase { return }
        context.close(promise: nil)
    }
}
