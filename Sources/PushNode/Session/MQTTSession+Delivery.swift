import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// Messages towards the terminal: the stored list, live pushes, routed publishes, acknowledgements.
extension MQTTSession {
    /// Reads the next entries of the stored list when there may be some and the window has
    /// room for them (see ``StoredBacklog``): a backlog of any length drains in order, a
    /// window at a time, as acknowledgements free it.
    mutating func pumpStored() {
        guard case .active = phase, writable else { return }
        guard let read = backlog.nextRead(room: window - outbound.count, window: window) else { return }
        emit(.readStored(read))
    }

    /// A list read (`readStored`) answered.
    mutating func storedRead(_ read: StoredBacklog.Read, _ result: Result<StoredListRead, any Error>) {
        guard case .active = phase else { return }
        switch result {
        case .success(let listed):
            readCompleted(read, entries: listed.entries, sent: listed.sent)
        case .failure(let error):
            logger.warning("reading stored messages failed", metadata: ["error": "\(error)"])
            backlog.readFailed()
        }
    }

    /// Handles a list read: the new entries go out, then the next read if there may be more.
    mutating func readCompleted(_ read: StoredBacklog.Read, entries: [String], sent: [String: UInt16]?) {
        let messages = entries.map { StoredMessage.decode($0) }
        switch backlog.readCompleted(read, ids: messages.map { $0?.id }, sent: sent, now: clock.uptime) {
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
    mutating func deliverStored(_ entries: ArraySlice<String>, _ messages: ArraySlice<StoredMessage?>) {
        var writes: [SessionWrite] = []
        var removed: [String] = []
        let now = clock.wallMillis
        for (entry, message) in zip(entries, messages) {
            guard let message else {
                logger.warning("dropping an unreadable stored entry")
                writes.append(.removeEntry(entry))
                continue
            }
            // Sent by this connection and waiting for its acknowledgement (a read from the head).
            if outbound.contains(messageID: message.id) {
                backlog.handled(message.id)
                continue
            }
            if removing.contains(message.id) { continue }
            if message.isExpired(nowMillis: now) {
                metrics.expired.increment()
                metrics.ledger.left(expiresAt: message.expiresAt)
                writes += [.removeEntry(entry), .forgetSent(messageID: message.id)]
                if message.hasStatus { record(message.id, .expired) }
                backlog.removed(message.id)
                continue
            }
            // A terminal that does not read: the rest waits in Redis until it drains its socket.
            if !writable {
                backlog.stopped()
                break
            }
            guard let delivery = delivery(for: message, shared: nil) else {
                // A message stored for a subscription the session no longer has (or its own,
                // under no local) is discarded; a push waits for the terminal to subscribe to
                // push/<id> again.
                if message.session == true {
                    metrics.ledger.left(expiresAt: message.expiresAt)
                    writes.append(.removeEntry(entry))
                    backlog.removed(message.id)
                } else {
                    backlog.handled(message.id)
                }
                continue
            }
            if delivery.qos > .atMostOnce && outbound.count >= window {
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
                metrics.ledger.left(expiresAt: message.expiresAt)
                writes.append(.removeEntry(entry))
                if message.hasStatus { record(message.id, .dropped) }
                backlog.removed(message.id)
                continue
            }
            if delivery.qos == .atMostOnce {
                metrics.ledger.left(expiresAt: message.expiresAt)
                writes.append(.removeEntry(entry))
                removed.append(message.id)
                backlog.removed(message.id)
            } else {
                backlog.handled(message.id)
                if packetID != earlier { writes.append(.recordSent(messageID: message.id, packetID: packetID)) }
            }
            if message.hasStatus { record(message.id, .delivered) }
        }
        flush()
        if !writes.isEmpty { removeFromList(writes, ids: removed) }
    }

    /// How `message` goes to this session, or nil when no subscription takes it (see
    /// ``SubscriptionTable/delivery(for:shared:terminal:)``).
    func delivery(for message: StoredMessage, shared: String?) -> Delivery? {
        subscriptions.delivery(for: message, shared: shared, terminal: terminal)
    }

    /// Writes one PUBLISH (not flushed) and tracks it when QoS 1 or 2, under `packetID` if that
    /// is given and free. Returns the packet id used (0 for QoS 0), or nil when the message is
    /// larger than the client's maximum packet size: such a message is discarded as if it had
    /// been sent (MQTT 5 3.1.2.11.4).
    @discardableResult
    mutating func send(
        _ message: StoredMessage, delivery: Delivery, dup: Bool, entry: String?, tracked: Bool, packetID preferred: UInt16? = nil,
        payload shared: ByteBuffer? = nil
    ) -> UInt16? {
        let properties =
            version.hasProperties
            ? message.outboundProperties(subscriptionIdentifiers: delivery.subscriptionIdentifiers, nowMillis: clock.wallMillis)
            : []
        let payload = shared ?? message.payloadBuffer()
        var publish = MQTTPublishPacket(
            topicName: message.topic, payload: payload, qos: delivery.qos, packetIdentifier: delivery.qos == .atMostOnce ? nil : 1,
            dup: dup, retain: delivery.retain, properties: properties)
        if clientMaximumPacketSize < Int.max {
            var scratch = ByteBuffer()
            try? MQTTPacket.publish(publish).write(to: &scratch, version: version)
            guard scratch.readableBytes <= clientMaximumPacketSize else {
                metrics.dropped.increment()
                logger.debug("message over the client's maximum packet size discarded", metadata: ["message": "\(message.id)"])
                return nil
            }
        }
        if let (alias, isNew) = outbound.alias(for: message.topic) {
            if !isNew { publish.topicName = "" }
            publish.properties.append(.topicAlias, .twoByteInteger(alias))
        }
        var id: UInt16 = 0
        if delivery.qos != .atMostOnce {
            id = outbound.send(message, entry: entry, tracked: tracked, qos: delivery.qos, preferring: preferred)
            publish.packetIdentifier = id
        }
        metrics.delivered.increment(qos: delivery.qos, stored: entry != nil)
        write(.publish(publish), flush: false)
        return id
    }

    /// Records this terminal's state for a message in its status (batched, see ``StatusRecorder``).

    /// QoS 2, first half: the terminal has the message (PUBREC); PUBREL goes out and the
    /// packet id stays taken until PUBCOMP.
    mutating func received(_ ack: MQTTAckPacket) {
        switch outbound.pubRec(ack) {
        case .unexpected:
            protocolError("PUBREC for packet \(ack.packetIdentifier), which awaits no PUBREC")
        case .refused(let pending):
            // The terminal refused the message (MQTT 5): the exchange ends here, without
            // PUBREL, and the message is not kept for redelivery.
            recordAcknowledged(pending)
            sendWaiting()
            pumpStored()
        case .release(let pending):
            write(.pubRel(MQTTAckPacket(packetIdentifier: ack.packetIdentifier)), flush: true)
            guard sessionExpiry > 0 else { return }
            // A persistent session keeps the exchange: the message leaves Redis now and a
            // reconnect (on any node) sends PUBREL again. A clean session's client forgets its
            // half of the exchange on reconnect, and many clients hand a QoS 2 message to the
            // application only on PUBREL: the message stays stored until PUBCOMP, so it is sent
            // again rather than lost.
            recordAcknowledged(pending)
            store([.awaitCompletion(packetID: ack.packetIdentifier)])
        }
    }

    /// QoS 2, second half: PUBCOMP frees the packet id.
    mutating func completed(_ packetID: UInt16) {
        guard let done = outbound.pubComp(packetID) else {
            return protocolError("PUBCOMP for packet \(packetID), which awaits no PUBCOMP")
        }
        if sessionExpiry > 0 {
            store([.completed(packetID: packetID)])
        } else {
            recordAcknowledged(done)
        }
        if case .draining = phase, outbound.isEmpty { return finishDraining() }
        sendWaiting()
        pumpStored()
    }

    mutating func acknowledged(_ packetID: UInt16) {
        // A PUBACK for a packet id not in flight at QoS 1 (a late duplicate) is ignored.
        guard let done = outbound.pubAck(packetID) else {
            return logger.debug("PUBACK for a packet not in flight", metadata: ["packet": "\(packetID)", "phase": "\(phase)"])
        }
        recordAcknowledged(done)
        if case .draining = phase, outbound.isEmpty { return finishDraining() }
        sendWaiting()
        pumpStored()
    }

    /// Removes an acknowledged message from Redis and records its state.
    mutating func recordAcknowledged(_ done: Inflight) {
        metrics.acknowledged.increment()
        var writes: [SessionWrite] = []
        if let entry = done.entry {
            metrics.ledger.left(expiresAt: done.expiresAt)
            writes += [.removeEntry(entry), .forgetSent(messageID: done.messageID)]
            backlog.removed(done.messageID)
        }
        // Acknowledged after its ttl passed: the status already counts it expired (the
        // control node settles expiry when the status is read), and it stays so.
        if done.tracked { record(done.messageID, (done.expiresAt > 0 && done.expiresAt <= clock.wallMillis) ? .expired : .acknowledged) }
        if !writes.isEmpty { removeFromList(writes, ids: done.entry == nil ? [] : [done.messageID]) }
    }

    /// Writes `writes`, which take the messages `ids` out of the list; until Redis confirms,
    /// list reads skip them.
    mutating func removeFromList(_ writes: [SessionWrite], ids: [String]) {
        guard !ids.isEmpty else { return store(writes) }
        removing.formUnion(ids)
        emit(.storeRemoving(writes, ids: ids))
    }

    /// Redis confirmed (or failed) the removal of `ids` from the list.
    mutating func removalConfirmed(_ ids: [String]) {
        removing.subtract(ids)
    }

    /// Told by a `wake` event that carries the new entries themselves. A session that has
    /// handled everything older delivers them at once, without reading the list (they are
    /// the list's newest entries); any other reads the list (``StoredBacklog``).
    mutating func wake(entries: [String]) {
        guard case .active = phase, backlog.mayDeliverFromWake(now: clock.uptime) else { return wake() }
        deliverStored(entries[...], entries.map { StoredMessage.decode($0) }[...])
        pumpStored()
    }

    /// Told by a `wake` event: the terminal's list has new entries.
    mutating func wake() {
        switch phase {
        case .active:
            backlog.woken()
            pumpStored()
        // The registration read the list; entries stored after that are read once it completes.
        case .connecting: backlog.woken()
        case .awaitingConnect, .draining, .stopped, .closed, .modifying: break
        }
    }

    /// Delivers a message that was not stored (online-only unicast, broadcast, topic push)
    /// if one of the session's subscriptions matches its topic. Before the stored backlog went
    /// out, live messages wait (bounded) so they never overtake it.
    ///
    /// `payload`: the message's payload decoded once for all the sessions it goes to.
    ///
    /// `countReach`: a broadcast, whose status counts the terminals it reached.
    mutating func deliverLive(_ message: StoredMessage, tracked: Bool, countReach: Bool = false, payload: ByteBuffer? = nil) {
        if holdUntilActive(message, tracked: tracked, routed: false, shared: nil) { return }
        var message = message
        // Unicast events name the terminals and leave the topic to each of them.
        if message.topic.isEmpty { message.topic = "push/\(terminal)" }
        guard let delivery = delivery(for: message, shared: nil) else { return }
        // Online-only messages are not kept for a terminal that does not keep up.
        if !writable || (delivery.qos > .atMostOnce && outbound.count >= liveLimit) {
            metrics.dropped.increment()
            if tracked { record(message.id, .dropped) }
            return
        }
        let sent = send(message, delivery: delivery, dup: false, entry: nil, tracked: tracked, payload: payload) != nil
        flush()
        if tracked { record(message.id, sent ? .delivered : .dropped) }
        if sent && countReach { emit(.countReach(messageID: message.id)) }
    }

    /// Live messages that come before the session is active wait (bounded) until it is, so they
    /// never overtake the stored backlog; a session past its end takes nothing. Returns true
    /// when the caller is done with `message` (kept for later, dropped, or not for this phase).
    mutating func holdUntilActive(_ message: StoredMessage, tracked: Bool, routed: Bool, shared: String?) -> Bool {
        switch phase {
        case .connecting(var connecting):
            guard connecting.deliveries.count < 4 * configuration.inflightWindow else {
                metrics.dropped.increment()
                if tracked { record(message.id, .dropped) }
                return true
            }
            phase = .modifying
            connecting.deliveries.append(EarlyDelivery(message: message, tracked: tracked, routed: routed, shared: shared))
            phase = .connecting(connecting)
            return true
        case .active:
            return false
        case .awaitingConnect, .draining, .stopped, .closed, .modifying:
            return true
        }
    }

    /// Sends waiting routed messages while the window has room and the socket takes them.
    mutating func sendWaiting() {
        guard !waiting.isEmpty, case .active = phase else { return }
        var sent = false
        while let first = waiting.first, outbound.count < window, writable {
            waiting.removeFirst()
            guard let delivery = delivery(for: first.message, shared: first.shared) else { continue }
            sent = send(first.message, delivery: delivery, dup: false, entry: nil, tracked: false) != nil || sent
        }
        if sent { flush() }
    }

    /// Unacknowledged messages beyond the stored window that live messages may add: a little
    /// slack for pushes, none past a receive maximum the client set.
    var liveLimit: Int {
        clientReceiveMaximum < Int(UInt16.max) ? window : 4 * window
    }

    /// Delivers a message a terminal published, routed here by the fleet index (`shared`:
    /// the shared subscription this session was picked for). For a persistent session a QoS
    /// 1/2 message is written to Redis while in flight, so a reconnect on any node gets it
    /// again; when the session cannot take it now it waits there instead of being dropped.
    mutating func deliverPublished(_ message: StoredMessage, shared: String?, payload: ByteBuffer? = nil) {
        if holdUntilActive(message, tracked: false, routed: true, shared: shared) { return }
        guard let delivery = delivery(for: message, shared: shared) else { return }
        let keep = sessionExpiry > 0 && delivery.qos > .atMostOnce && shared == nil
        if !keep, delivery.qos > .atMostOnce, !waiting.isEmpty || !writable || outbound.count >= window {
            // Behind the ones already waiting, in order; beyond the cap the message is dropped.
            guard waiting.count < configuration.offlineQueueCap else {
                metrics.dropped.increment()
                return
            }
            waiting.append((message, shared))
            return
        }
        if keep { return deliverKept(message, delivery: delivery, payload: payload) }
        if !writable || (delivery.qos > .atMostOnce && outbound.count >= liveLimit) {
            metrics.dropped.increment()
            return
        }
        send(message, delivery: delivery, dup: false, entry: nil, tracked: false, payload: payload)
        flush()
    }

    /// A routed QoS 1/2 message for a persistent session: stored in the terminal's list first.
    /// When the session has handled everything before it in the list, it goes out at once;
    /// otherwise it waits behind the entries not read yet and is read in order.
    mutating func deliverKept(_ message: StoredMessage, delivery: Delivery, payload: ByteBuffer?) {
        var stored = message
        stored.session = true
        let entry = stored.encoded()
        let ttl =
            message.expiresAt > 0
            ? max(1, message.expiresAt - clock.wallMillis) : Int64(configuration.maximumSessionExpiry) * 1000
        var writes: [SessionWrite] = [.keep(entry: entry, capacity: configuration.offlineQueueCap, lifetimeMillis: ttl)]
        metrics.ledger.entered(expiresAt: message.expiresAt)
        if backlog.caughtUp, !backlog.isReading, writable, outbound.count < window,
            let packetID = send(message, delivery: delivery, dup: false, entry: entry, tracked: false, payload: payload)
        {
            backlog.handled(message.id)
            writes.append(.recordSent(messageID: message.id, packetID: packetID))
            store(writes)
            return flush()
        }
        store(writes)
        backlog.woken()
        pumpStored()
    }
}
