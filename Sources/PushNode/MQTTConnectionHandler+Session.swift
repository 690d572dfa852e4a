import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// CONNECT: credentials, registration in Redis, takeover of an earlier connection, CONNACK.
extension MQTTConnectionHandler {
    // MARK: CONNECT

    func connectReceived(_ connect: MQTTConnectPacket) {
        connectDeadline?.cancel()
        connectDeadline = nil
        let negotiated = ConnectNegotiation.negotiate(
            connect, configuration: node.configuration, credentials: node.credentials, now: FleetClock.nowSeconds(),
            newID: FleetClock.newEpoch)
        let terms: ConnectNegotiation.Terms
        switch negotiated {
        case .failure(let refusal):
            version = refusal.version
            encoder.version = version
            requestsProblemInformation = refusal.requestsProblemInformation
            if let detail = refusal.detail {
                logger.info("connect refused", metadata: ["client": "\(connect.clientIdentifier)", "reason": "\(detail)"])
            }
            return refuse(refusal.v3, v5: refusal.v5, reason: refusal.reason)
        case .success(let accepted):
            terms = accepted
        }
        version = terms.version
        encoder.version = version
        inbound = InboundFlow(
            receiveMaximum: node.configuration.receiveMaximum, topicAliasMaximum: node.configuration.topicAliasMaximum,
            hasProperties: version.hasProperties)
        cleanStart = terms.cleanStart
        requestedSessionExpiry = terms.requestedSessionExpiry
        requestsProblemInformation = terms.requestsProblemInformation
        if let value = terms.clientReceiveMaximum { clientReceiveMaximum = value }
        if let value = terms.clientMaximumPacketSize { clientMaximumPacketSize = value }
        outbound.aliasMaximum = min(Int(terms.clientTopicAliasMaximum), node.configuration.topicAliasMaximum)
        sessionExpiry = terms.sessionExpiry
        terminal = terms.terminal
        persistentAtConnect = sessionExpiry > 0
        will = terms.will
        serverKeepAlive = terms.serverKeepAlive
        keepAlive = .seconds(Int64(terms.keepAliveSeconds))
        let (issuedAt, assigned) = (terms.issuedAt, terms.assignedID)
        epoch = FleetClock.newEpoch()
        connectedAt = FleetClock.nowMillis()
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

    func register(issuedAt: String, assignedID: String?) {
        guard let context else { return }
        // The script reads the head of the list: the backlog's first read.
        guard let read = backlog.nextRead(room: window, window: window) else { preconditionFailure("a new session reads its list") }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        registerSentAt = .now()
        store.register(
            epoch: epoch, connectedAt: connectedAt, cleanStart: cleanStart, issuedAt: issuedAt, readCount: read.count,
            persistent: sessionExpiry > 0
        ).hop(to: context.eventLoop).whenComplete { result in
            loopBound.value.registered(result, read: read, assignedID: assignedID)
        }
    }

    /// A registration waiting for the terminal's previous connection to stop (a takeover);
    /// boxed, since most connections never wait.
    final class PendingTakeover {
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

    /// How long a new connection waits for its predecessor to stop before it goes ahead.
    static let takeoverTimeout = TimeAmount.seconds(3)

    func registered(_ result: Result<SessionRegistration, any Error>, read: StoredBacklog.Read, assignedID: String?) {
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
        let previous = node.registry.register(handle)
        // A wake that came while the registration was under way (after its list read, before
        // this handle was findable) reached no session: the list is read again.
        if node.registry.takeMissedWake(for: terminal, since: registerSentAt) { backlog.woken() }
        if let previous {
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
            store.kick(on: oldNode, kick).hop(to: context.eventLoop).whenComplete { result in
                // Nobody listens on that node's channel (it died): nothing to wait for, and
                // nothing changed since the registration read (a reconnect storm after a node
                // died costs no extra read). Redis unavailable: read again when it is.
                guard case .success(let listeners) = result, listeners > 0 else {
                    let unheard = (try? result.get()) == 0
                    return loopBound.value.predecessorStopped(successor: successor, reload: !unheard)
                }
            }
        } else {
            activate(registration, read: read, assignedID: assignedID)
        }
    }

    func waitForPredecessor(_ registration: SessionRegistration, read: StoredBacklog.Read, assignedID: String?) {
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
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundPending = NIOLoopBound(pending, eventLoop: context.eventLoop)
        store.reload(pending.registration, window: pending.read.count).hop(to: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            let pending = boundPending.value
            guard case .registering = handler.phase else { return }
            switch result {
            case .success(let registration):
                handler.activate(registration, read: pending.read, assignedID: pending.assignedID)
            case .failure(let error):
                handler.logger.warning("reading the session after a takeover failed", metadata: ["error": "\(error)"])
                handler.refuse(.v3ServerUnavailable, v5: .serverUnavailable)
            }
        }
    }

    /// Starts the session: CONNACK, restored subscriptions, PUBRELs of a resumed session, the
    /// stored list, then what arrived meanwhile.
    func activate(_ registration: SessionRegistration, read: StoredBacklog.Read, assignedID: String?) {
        let sessionPresent = !cleanStart && registration.sessionExisted
        // A clean start ended the old session: its filters leave the offline index.
        let discarded = registration.discardedFilters.filter { SharedFilter($0) == nil }
        var writes: [SessionWrite] = []
        if !discarded.isEmpty { writes.append(.storedSubscriptions(adding: false, filters: discarded)) }
        inbound.resume(awaitingRelease: registration.released)

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
        if !indexed.isEmpty { writes.append(.nodeIndex(adding: true, filters: indexed)) }
        if sessionExpiry > 0, !restored.isEmpty { writes.append(.storedSubscriptions(adding: true, filters: restored)) }
        store.send(writes)

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
                outbound.resumeRelease(packetID, placeholder: placeholder)
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
    func refuse(_ v3: MQTTReasonCode, v5: MQTTReasonCode, reason: String? = nil) {
        node.metrics.connectsRefused.increment()
        let code = version.hasProperties ? v5 : v3
        var properties: MQTTProperties = []
        if version.hasProperties, let reason { properties.append(.reasonString, .string(reason)) }
        write(.connAck(MQTTConnAckPacket(sessionPresent: false, reasonCode: code, properties: properties)), flush: true)
        close()
    }

    /// Whether the client accepts reason strings on acknowledgements (MQTT 5 request problem
    /// information; CONNACK and DISCONNECT carry them regardless).
    var wantsProblemInformation: Bool { version.hasProperties && requestsProblemInformation }

    /// A DISCONNECT from the server, with a reason string.
    func serverDisconnect(_ code: MQTTReasonCode, _ reason: String) -> MQTTPacket {
        .disconnect(MQTTDisconnectPacket(reasonCode: code, properties: [MQTTProperty(.reasonString, .string(reason))]))
    }
}
