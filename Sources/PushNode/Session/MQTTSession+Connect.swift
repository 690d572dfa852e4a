import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// CONNECT: credentials, admission, registration in Redis, takeover of an earlier connection,
/// CONNACK.
extension MQTTSession {
    /// How long a new connection waits for its predecessor to stop before it goes ahead.
    static let takeoverTimeout = TimeAmount.seconds(3)

    mutating func connectReceived(_ connect: MQTTConnectPacket) {
        emit(.cancel(.connectDeadline))
        let negotiated = ConnectNegotiation.negotiate(
            connect, configuration: configuration, credentials: environment.credentials, now: clock.wallMillis / 1000,
            newID: environment.newID)
        let terms: ConnectNegotiation.Terms
        switch negotiated {
        case .failure(let refusal):
            version = refusal.version
            emit(.useVersion(version))
            requestsProblemInformation = refusal.requestsProblemInformation
            if let detail = refusal.detail {
                logger.info("connect refused", metadata: ["client": "\(connect.clientIdentifier)", "reason": "\(detail)"])
            }
            return refuse(refusal.v3, v5: refusal.v5, reason: refusal.reason)
        case .success(let accepted):
            terms = accepted
        }
        version = terms.version
        emit(.useVersion(version))
        inbound = InboundFlow(
            receiveMaximum: configuration.receiveMaximum, topicAliasMaximum: configuration.topicAliasMaximum,
            hasProperties: version.hasProperties)
        cleanStart = terms.cleanStart
        requestedSessionExpiry = terms.requestedSessionExpiry
        requestsProblemInformation = terms.requestsProblemInformation
        if let value = terms.clientReceiveMaximum { clientReceiveMaximum = value }
        if let value = terms.clientMaximumPacketSize { clientMaximumPacketSize = value }
        outbound.aliasMaximum = min(Int(terms.clientTopicAliasMaximum), configuration.topicAliasMaximum)
        sessionExpiry = terms.sessionExpiry
        terminal = terms.terminal
        persistentAtConnect = sessionExpiry > 0
        will = terms.will
        serverKeepAlive = terms.serverKeepAlive
        keepAlive = .seconds(Int64(terms.keepAliveSeconds))
        epoch = environment.newID()
        connectedAt = clock.wallMillis
        phase = .connecting(Connecting(issuedAt: terms.issuedAt, assignedID: terms.assignedID))
        emit(.admit)
    }

    /// The connect rate limiter let this connection in (at once, or after its delay).
    mutating func admitted(after delay: TimeAmount = .zero) {
        guard case .connecting = phase else { return }
        if delay > .zero {
            metrics.connectsThrottled.increment()
            return emit(.schedule(.admission, delay))
        }
        register()
    }

    /// The connect rate limiter refused this connection.
    mutating func throttled() {
        guard case .connecting = phase else { return }
        metrics.connectsThrottled.increment()
        refuse(.v3ServerUnavailable, v5: .connectionRateExceeded)
    }

    /// Sends the register script (admitted, or the admission delay is over).
    mutating func register() {
        guard case .connecting(var connecting) = phase, case .admitting = connecting.step else { return }
        // The script reads the head of the list: the backlog's first read.
        guard let read = backlog.nextRead(room: window, window: window) else { preconditionFailure("a new session reads its list") }
        connecting.step = .registering(read: read)
        phase = .connecting(connecting)
        registerSentAt = clock.uptime
        emit(
            .register(
                SessionRegisterRequest(
                    epoch: epoch, connectedAt: connectedAt, cleanStart: cleanStart, issuedAt: connecting.issuedAt, readCount: read.count,
                    persistent: sessionExpiry > 0)))
    }

    /// The register script answered.
    mutating func registered(_ result: Result<SessionRegistration, any Error>) {
        guard case .connecting(var connecting) = phase, case .registering(let read) = connecting.step else { return }
        switch result {
        case .success(let registration):
            connecting.step = .claiming(registration, read: read)
            phase = .connecting(connecting)
            emit(.claimHandle)
        case .failure(SessionRegistration.Failure.revoked):
            logger.info("credential revoked")
            refuse(.v3NotAuthorized, v5: .notAuthorized, reason: "credential revoked")
        case .failure(let error):
            logger.warning("session registration failed", metadata: ["error": "\(error)"])
            refuse(.v3ServerUnavailable, v5: .serverUnavailable)
        }
    }

    /// The node finds this connection for its terminal now. Takeover: the previous connection
    /// (`previousHere`: on this node; otherwise the one the registration named, on another)
    /// stops delivering before this one starts, so no message goes out on both; what it sent
    /// and did not see acknowledged is then read again and goes out here with DUP.
    /// `missedWake`: a wake came while the registration was under way (after its list read,
    /// before this connection was findable): the list is read again.
    mutating func handleClaimed(previousHere: Bool, missedWake: Bool) {
        guard case .connecting(var connecting) = phase, case .claiming(let registration, let read) = connecting.step else { return }
        if missedWake { backlog.woken() }
        let oldNode = registration.oldNode
        let remote = !oldNode.isEmpty && oldNode != configuration.nodeID
        guard previousHere || remote else { return activate(registration, read: read, connecting: connecting) }
        connecting.step = .awaitingPredecessor(registration, read: read)
        phase = .connecting(connecting)
        emit(.schedule(.takeover(successor: epoch), Self.takeoverTimeout))
        if previousHere {
            emit(.stopLocalPredecessor(successor: epoch))
        } else {
            var kick = NodeEvent(kind: .kick, terminals: [terminal], epoch: registration.oldEpoch)
            (kick.from, kick.successor) = (configuration.nodeID, epoch)
            emit(.kick(node: oldNode, kick))
        }
    }

    /// The previous connection's node answered the kick: `listeners` nodes heard it, or nil
    /// when Redis could not be asked. When it was heard, that node answers with a `stopped`
    /// event once the connection stopped (`predecessorStopped(successor:)`).
    mutating func kickAnswered(listeners: Int?) {
        guard let listeners, listeners > 0 else {
            // Nobody listens on that node's channel (it died): nothing to wait for, and nothing
            // changed since the registration read (a reconnect storm after a node died costs
            // no extra read). Redis unavailable: read again when it is.
            return predecessorStopped(successor: epoch, reload: listeners == nil)
        }
    }

    /// The terminal's previous connection stopped (or could not be reached, or the wait for
    /// it timed out): read what it left in Redis and start.
    mutating func predecessorStopped(successor: String, reload: Bool = true) {
        guard successor == epoch, case .connecting(var connecting) = phase,
            case .awaitingPredecessor(let registration, let read) = connecting.step
        else { return }
        emit(.cancel(.takeover(successor: epoch)))
        guard reload else { return activate(registration, read: read, connecting: connecting) }
        connecting.step = .reloading(read: read)
        phase = .connecting(connecting)
        emit(.reload(registration, window: read.count))
    }

    /// What the predecessor left was read.
    mutating func reloaded(_ result: Result<SessionRegistration, any Error>) {
        guard case .connecting(let connecting) = phase, case .reloading(let read) = connecting.step else { return }
        switch result {
        case .success(let registration):
            activate(registration, read: read, connecting: connecting)
        case .failure(let error):
            logger.warning("reading the session after a takeover failed", metadata: ["error": "\(error)"])
            refuse(.v3ServerUnavailable, v5: .serverUnavailable)
        }
    }

    /// Starts the session: CONNACK, restored subscriptions, PUBRELs of a resumed session, the
    /// stored list, then what arrived meanwhile.
    private mutating func activate(_ registration: SessionRegistration, read: StoredBacklog.Read, connecting: Connecting) {
        let sessionPresent = !cleanStart && registration.sessionExisted
        // A clean start ended the old session: its filters leave the offline index.
        let discarded = registration.discardedFilters.filter { SharedFilter($0) == nil }
        var writes: [SessionWrite] = []
        if !discarded.isEmpty { writes.append(.storedSubscriptions(adding: false, filters: discarded)) }
        inbound.resume(awaitingRelease: registration.released)

        subscriptions = SubscriptionTable()
        var indexed: [String] = []
        var restored: [String] = []
        for (filter, encoded) in registration.subscriptions {
            guard let subscription = Subscription(encoded: encoded) else { continue }
            subscriptions.subscribe(filter, subscription, terminal: terminal)
            if isAutomatic(filter) { continue }
            if joinLocalIndex(filter) { indexed.append(filter) }
            if SharedFilter(filter) == nil { restored.append(filter) }
        }
        if !indexed.isEmpty { writes.append(.nodeIndex(adding: true, filters: indexed)) }
        if sessionExpiry > 0, !restored.isEmpty { writes.append(.storedSubscriptions(adding: true, filters: restored)) }
        store(writes)

        var properties: MQTTProperties = []
        if version.hasProperties {
            if let assignedID = connecting.assignedID { properties.append(.assignedClientIdentifier, .string(assignedID)) }
            if let requested = requestedSessionExpiry, requested != sessionExpiry {
                properties.append(.sessionExpiryInterval, .fourByteInteger(sessionExpiry))
            }
            if let serverKeepAlive { properties.append(.serverKeepAlive, .twoByteInteger(serverKeepAlive)) }
            properties.append(.receiveMaximum, .twoByteInteger(UInt16(clamping: configuration.receiveMaximum)))
            properties.append(.maximumPacketSize, .fourByteInteger(UInt32(configuration.maximumPacketSize)))
            properties.append(.topicAliasMaximum, .twoByteInteger(UInt16(clamping: configuration.topicAliasMaximum)))
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
        metrics.connectsAccepted.increment()
        metrics.connections.increment()
        if keepAlive > .zero { emit(.watchKeepAlive) }

        readCompleted(read, entries: registration.queue, sent: registration.sent)
        for early in connecting.deliveries {
            if early.routed {
                deliverPublished(early.message, shared: early.shared)
            } else {
                deliverLive(early.message, tracked: early.tracked)
            }
        }
        for packet in connecting.packets { process(packet) }
        flush()
    }

    /// Refuses the CONNECT; MQTT 5 clients also get `reason` as the reason string.
    mutating func refuse(_ v3: MQTTReasonCode, v5: MQTTReasonCode, reason: String? = nil) {
        metrics.connectsRefused.increment()
        let code = version.hasProperties ? v5 : v3
        var properties: MQTTProperties = []
        if version.hasProperties, let reason { properties.append(.reasonString, .string(reason)) }
        write(.connAck(MQTTConnAckPacket(sessionPresent: false, reasonCode: code, properties: properties)), flush: true)
        close()
    }
}
