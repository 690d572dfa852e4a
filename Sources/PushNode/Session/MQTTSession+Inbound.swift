import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// Packets from an active session: PUBLISH and its QoS flows, DISCONNECT, wills.
extension MQTTSession {
    mutating func process(_ packet: MQTTPacket) {
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

    mutating func protocolError(_ reason: String) {
        disconnect(.protocolError, reason)
    }

    /// Ends the connection for a client's mistake: MQTT 5 gets DISCONNECT with the reason.
    mutating func disconnect(_ code: MQTTReasonCode, _ reason: String) {
        metrics.protocolErrors.increment()
        logger.info("closing the connection", metadata: ["reason": "\(reason)", "code": "\(code)"])
        if version.hasProperties { write(serverDisconnect(code, reason), flush: true) }
        close()
    }

    /// Unacknowledged QoS 1/2 messages towards the terminal at most: ours, or less if the
    /// client's receive maximum says so.
    var window: Int { min(configuration.inflightWindow, clientReceiveMaximum) }

    mutating func disconnectReceived(_ disconnect: MQTTDisconnectPacket) {
        if let requested = disconnect.properties.integer(.sessionExpiryInterval) {
            // A session that ends with the connection cannot be made to outlive it (MQTT 5 3.14.2.2.2).
            guard sessionExpiry > 0 || requested == 0 else { return protocolError("session expiry set on DISCONNECT after 0 on CONNECT") }
            sessionExpiry = min(requested, UInt32(clamping: configuration.maximumSessionExpiry))
        }
        if disconnect.reasonCode != .disconnectWithWill { will = nil }
        close()
    }

    // MARK: Terminal publishes

    mutating func publishReceived(_ publish: MQTTPublishPacket) {
        switch inbound.received(publish) {
        case .route(let topic):
            route(publish, topic: topic, packetID: publish.packetIdentifier)
        case .acknowledgeAgain(let pubRec):
            // The terminal resent a QoS 2 PUBLISH it already handed over: not routed again.
            write(pubRec, flush: true)
        case .disconnect(let code, let reason):
            disconnect(code, reason)
        case .close(let reason):
            // MQTT 3.1.1 has no receive maximum to announce; reading also pauses while routes
            // are pending (see `routesPending`).
            metrics.protocolErrors.increment()
            logger.info("closing the connection", metadata: ["reason": "\(reason)"])
            close()
        }
    }

    mutating func route(_ publish: MQTTPublishPacket, topic: String, packetID: UInt16?) {
        metrics.published[Int(publish.qos.rawValue)].increment()
        let limits = configuration
        var refusal: (code: MQTTReasonCode, why: String)?
        if MQTTTopic.levelCount(topic) > limits.maximumTopicLevels {
            refusal = (.topicNameInvalid, "more than \(limits.maximumTopicLevels) topic levels")
        } else if !environment.acl.mayPublish(topic, terminal: terminal) {
            refusal = (.notAuthorized, "not allowed to publish to \(topic)")
        } else if version.hasProperties, publish.properties.integer(.payloadFormatIndicator) == 1,
            String(validating: publish.payload.readableBytesView, as: UTF8.self) == nil
        {
            refusal = (.payloadFormatInvalid, "payload is not valid UTF-8")
        } else if publish.retain, publish.payload.readableBytes > limits.maximumRetainedSize {
            refusal = (.quotaExceeded, "a retained payload over \(limits.maximumRetainedSize) bytes")
        } else if publish.properties.userPropertyBytes > limits.maximumUserPropertyBytes {
            refusal = (.implementationSpecificError, "user properties over \(limits.maximumUserPropertyBytes) bytes")
        }
        if let refusal { return refuse(publish, packetID: packetID, topic: topic, refusal.code, why: refusal.why) }
        let message = StoredMessage(
            published: topic, payload: publish.payload, qos: publish.qos, retain: publish.retain, properties: publish.properties,
            origin: terminal)
        routesPending += 1
        if routesPending == configuration.receiveMaximum { emit(.setReading(false)) }
        emit(.route(message, packetID: packetID))
    }

    /// The fleet took (or refused) a publish of this terminal; `packetID` nil for QoS 0.
    mutating func routed(packetID: UInt16?, _ outcome: RouteOutcome) {
        routesPending -= 1
        if routesPending == configuration.receiveMaximum / 2 { emit(.setReading(true)) }
        guard let packetID else { return }
        switch outcome {
        case .accepted:
            inbound.settle(packetID, code: .success)
        case .retainedStoreFull(let why):
            // Refused in its place among the acknowledgements (3.1.1: acknowledged, dropped).
            metrics.publishesRefused.increment()
            inbound.settle(
                packetID, code: version.hasProperties ? .quotaExceeded : .success, reason: wantsProblemInformation ? why : nil)
        case .failed(let error):
            logger.warning("routing a publish failed", metadata: ["error": "\(error)"])
            // Not accepted: MQTT 5 says so; a 3.1.1 client learns it by the connection closing
            // and sends the message again.
            guard version.hasProperties else { return close() }
            inbound.settle(packetID, code: .implementationSpecificError)
        }
        flushInboundAcks()
    }

    /// Refuses a PUBLISH: MQTT 5 with `code` (and `why` if the client wants problem
    /// information); MQTT 3.1.1 cannot refuse one, so it is acknowledged and dropped.
    mutating func refuse(_ publish: MQTTPublishPacket, packetID: UInt16?, topic: String, _ code: MQTTReasonCode, why: String) {
        metrics.publishesRefused.increment()
        logger.debug("publish refused", metadata: ["topic": "\(topic)", "reason": "\(why)"])
        guard let packetID else { return }
        inbound.settle(packetID, code: version.hasProperties ? code : .success, reason: wantsProblemInformation ? why : nil)
        flushInboundAcks()
    }

    /// Writes the PUBACK / PUBREC of every finished inbound publish at the head of the line; a
    /// persistent session keeps its QoS 2 exchanges awaiting PUBREL in Redis.
    mutating func flushInboundAcks() {
        let (packets, awaiting) = inbound.readyAcknowledgements()
        guard !packets.isEmpty else { return }
        if sessionExpiry > 0, !awaiting.isEmpty { store(awaiting.map { .awaitRelease(packetID: $0) }) }
        for packet in packets { write(packet, flush: false) }
        flush()
    }

    mutating func released(_ packetID: UInt16) {
        let (pubComp, known) = inbound.released(packetID)
        if known, sessionExpiry > 0 { store([.released(packetID: packetID)]) }
        write(pubComp, flush: true)
    }

    /// Publishes the will, or with a delay keeps it in Redis (``DelayedWills``), unless the
    /// session continues on another connection.
    mutating func publishWill() {
        guard let will = self.will?.message, let willDelay = self.will?.delay else { return }
        self.will = nil
        guard environment.acl.mayPublish(will.topic, terminal: terminal) else { return }
        // The will waits no longer than the session lives; a takeover continues the session,
        // so a delayed will is not sent then.
        let delay = min(willDelay, sessionExpiry)
        guard delay > 0 else { return emit(.publishWill(will)) }
        guard !wasTakenOver else { return }
        emit(.keepWill(will, epoch: epoch, delay: Int(delay)))
    }
}
