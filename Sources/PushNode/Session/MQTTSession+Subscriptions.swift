import FleetCore
import Logging
import MQTTCodec

/// SUBSCRIBE and UNSUBSCRIBE, retained messages, the automatic subscriptions, the node index.
extension MQTTSession {
    mutating func subscribeReceived(_ subscribe: MQTTSubscribePacket) {
        var identifier: UInt32?
        if version.hasProperties, let value = subscribe.properties.integer(.subscriptionIdentifier) {
            guard value > 0 else { return disconnect(.protocolError, "subscription identifier 0") }
            identifier = value
        }
        var codes: [MQTTReasonCode] = []
        var record: [String: String] = [:]
        var indexed: [String] = []
        var stored: [String] = []
        var retained: [RetainedRequest] = []
        var refused: [String] = []
        var overQuota = false
        // A filter given several times in one SUBSCRIBE: each gets its code, the last one's
        // options stand, and its work (index, Redis, retained messages) is done once.
        let lastIndex = Dictionary(subscribe.subscriptions.enumerated().map { ($1.topicFilter, $0) }) { _, later in later }
        for (position, requested) in subscribe.subscriptions.enumerated() {
            let filter = requested.topicFilter
            let shared = SharedFilter(filter)
            guard
                MQTTTopic.levelCount(filter) <= configuration.maximumTopicLevels,
                filter.hasPrefix("$share/") ? shared.map({ MQTTTopic.isValidFilter($0.filter) }) ?? false : MQTTTopic.isValidFilter(filter)
            else {
                codes.append(version.hasProperties ? .topicFilterInvalid : .v3SubscribeFailure)
                continue
            }
            if shared != nil && requested.options.noLocal && version.hasProperties {
                return disconnect(.protocolError, "no local on a shared subscription")
            }
            guard environment.acl.maySubscribe(filter, terminal: terminal) else {
                codes.append(version.hasProperties ? .notAuthorized : .v3SubscribeFailure)
                refused.append(filter)
                continue
            }
            let subscription = Subscription(
                qos: requested.options.qos, noLocal: requested.options.noLocal, retainAsPublished: requested.options.retainAsPublished,
                identifier: identifier)
            guard
                isAutomatic(filter) || subscriptions.subscription(filter, terminal: terminal) != nil
                    || subscriptions.count < configuration.maximumSubscriptions
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
                subscriptions.subscribe(filter, subscription, terminal: terminal)
                record[filter] = subscription.encoded
                codes.append(MQTTReasonCode(subscription.qos.rawValue))
                continue
            }
            let isNew = subscriptions.subscribe(filter, subscription, terminal: terminal)
            if isNew, joinLocalIndex(filter) { indexed.append(filter) }
            record[filter] = subscription.encoded
            if sessionExpiry > 0 && shared == nil { stored.append(filter) }
            switch requested.options.retainHandling {
            case .sendOnSubscribe where shared == nil: retained.append(RetainedRequest(filter: filter, subscription: subscription))
            case .sendOnSubscribeIfNew where shared == nil && isNew:
                retained.append(RetainedRequest(filter: filter, subscription: subscription))
            default: break
            }
            codes.append(MQTTReasonCode(subscription.qos.rawValue))
        }
        var writes: [SessionWrite] = []
        if !indexed.isEmpty { writes.append(.nodeIndex(adding: true, filters: indexed)) }
        if !record.isEmpty { writes.append(.recordSubscriptions(record)) }
        if !stored.isEmpty { writes.append(.storedSubscriptions(adding: true, filters: stored)) }
        var subackProperties: MQTTProperties = []
        if wantsProblemInformation, !refused.isEmpty {
            subackProperties.append(.reasonString, .string("not allowed to subscribe to " + refused.joined(separator: ", ")))
        } else if wantsProblemInformation, overQuota {
            subackProperties.append(.reasonString, .string("at most \(configuration.maximumSubscriptions) subscriptions per session"))
        }
        let suback = MQTTPacket.subAck(
            MQTTSubAckPacket(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes, properties: subackProperties))
        guard !writes.isEmpty else { return write(suback, flush: true) }
        // SUBACK once the fleet index has the filters, so a publish sent after it finds them.
        emit(.recordSubscriptions(writes, SubscribeReply(suback: suback, retained: retained)))
    }

    /// The subscriptions of a SUBSCRIBE were recorded (or recording them `failed`): SUBACK,
    /// then the retained messages for them.
    mutating func subscriptionsRecorded(_ reply: SubscribeReply, failed error: (any Error)? = nil) {
        if let error { logger.warning("recording subscriptions failed", metadata: ["error": "\(error)"]) }
        switch phase {
        case .active, .draining: break
        default: return
        }
        write(reply.suback, flush: true)
        if !reply.retained.isEmpty { emit(.readRetained(reply.retained)) }
    }

    /// Sends the retained messages matching new subscriptions (read by `readRetained`).
    mutating func retainedRead(_ messages: [StoredMessage], for requested: [RetainedRequest]) {
        guard case .active = phase else { return }
        let now = clock.wallMillis
        for message in messages where !message.isExpired(nowMillis: now) {
            var best: Subscription?
            var identifiers: [UInt32] = []
            for request in requested where MQTTTopic.matches(filter: request.filter, topic: message.topic) {
                if best == nil || request.subscription.qos > best!.qos { best = request.subscription }
                if let id = request.subscription.identifier { identifiers.append(id) }
            }
            guard let best else { continue }
            let qos = min(best.qos, MQTTQoS(rawValue: min(message.qos, 2)) ?? .atMostOnce)
            guard qos == .atMostOnce || outbound.count < window else { continue }
            send(
                message, delivery: Delivery(qos: qos, retain: true, subscriptionIdentifiers: identifiers), dup: false, entry: nil,
                tracked: false)
        }
        flush()
    }

    mutating func unsubscribeReceived(_ unsubscribe: MQTTUnsubscribePacket) {
        var codes: [MQTTReasonCode] = []
        var unindexed: [String] = []
        var stored: [String] = []
        for filter in unsubscribe.topicFilters {
            let existed = subscriptions.unsubscribe(filter, terminal: terminal)
            if isAutomatic(filter) {
                codes.append(existed ? .success : .noSubscriptionExisted)
                continue
            }
            guard existed else {
                codes.append(.noSubscriptionExisted)
                continue
            }
            codes.append(.success)
            if leaveLocalIndex(filter) { unindexed.append(filter) }
            if sessionExpiry > 0 && SharedFilter(filter) == nil { stored.append(filter) }
        }
        var writes: [SessionWrite] = [.forgetSubscriptions(unsubscribe.topicFilters)]
        if !unindexed.isEmpty { writes.append(.nodeIndex(adding: false, filters: unindexed)) }
        if !stored.isEmpty { writes.append(.storedSubscriptions(adding: false, filters: stored)) }
        store(writes)
        write(.unsubAck(MQTTSubAckPacket(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: codes)), flush: true)
    }

    /// `push/<id>` and `broadcast`: every session has them; pushes reach them without the index.
    func isAutomatic(_ filter: String) -> Bool {
        SubscriptionTable.isAutomatic(filter, terminal: terminal)
    }

    var member: LocalSubscriptions.Member { LocalSubscriptions.Member(terminal: terminal, epoch: epoch) }

    /// Adds a filter to the node's local index; true when the fleet index must learn it.
    func joinLocalIndex(_ filter: String) -> Bool {
        environment.local.add(member, filter: filter)
    }

    func leaveLocalIndex(_ filter: String) -> Bool {
        environment.local.remove(member, filter: filter)
    }

    /// Takes all of this connection's subscriptions out of the node's index.
    mutating func leaveLocalIndex() {
        let unindexed = subscriptions.filters.keys.filter { leaveLocalIndex($0) }
        if !unindexed.isEmpty { store([.nodeIndex(adding: false, filters: unindexed)]) }
    }
}
