import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// SUBSCRIBE and UNSUBSCRIBE, retained messages, the automatic subscriptions, the node index.
extension MQTTConnectionHandler {
    // MARK: Subscriptions

    func subscribeReceived(_ subscribe: MQTTSubscribePacket) {
        var identifier: UInt32?
        if version.hasProperties, let value = subscribe.properties.integer(.subscriptionIdentifier) {
            guard value > 0 else { return disconnect(.protocolError, "subscription identifier 0") }
            identifier = value
        }
        var codes: [MQTTReasonCode] = []
        var record: [String: String] = [:]
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
                record[filter] = subscription.encoded
                codes.append(MQTTReasonCode(subscription.qos.rawValue))
                continue
            }
            let isNew = subscriptions.updateValue(subscription, forKey: filter) == nil
            if isNew, joinLocalIndex(filter) { indexed.append(filter) }
            record[filter] = subscription.encoded
            if sessionExpiry > 0 && shared == nil { stored.append(filter) }
            switch requested.options.retainHandling {
            case .sendOnSubscribe where shared == nil: retained.append((filter, subscription))
            case .sendOnSubscribeIfNew where shared == nil && isNew: retained.append((filter, subscription))
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
            subackProperties.append(.reasonString, .string("at most \(node.configuration.maximumSubscriptions) subscriptions per session"))
        }
        let suback = MQTTPacket.subAck(
            MQTTSubAckPacket(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes, properties: subackProperties))
        guard !writes.isEmpty, let context else { return write(suback, flush: true) }
        // SUBACK once the fleet index has the filters, so a publish sent after it finds them.
        let retainedFor = retained
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        store.write(writes).hop(to: context.eventLoop).whenComplete { result in
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
    func sendRetained(for requested: [(filter: String, subscription: Subscription)]) {
        guard let context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        store.retained(for: requested.map(\.filter)).hop(to: context.eventLoop).whenSuccess { messages in
            let handler = loopBound.value
            guard case .active = handler.phase else { return }
            let now = FleetClock.nowMillis()
            for message in messages where !message.isExpired(nowMillis: now) {
                var best: Subscription?
                var identifiers: [UInt32] = []
                for (filter, subscription) in requested where MQTTTopic.matches(filter: filter, topic: message.topic) {
                    if best == nil || subscription.qos > best!.qos { best = subscription }
                    if let id = subscription.identifier { identifiers.append(id) }
                }
                guard let best else { continue }
                let qos = min(best.qos, MQTTQoS(rawValue: min(message.qos, 2)) ?? .atMostOnce)
                guard qos == .atMostOnce || handler.outbound.count < handler.window else { continue }
                handler.send(
                    message, delivery: Delivery(qos: qos, retain: true, subscriptionIdentifiers: identifiers), dup: false, entry: nil,
                    tracked: false)
            }
            handler.flush()
        }
    }

    func unsubscribeReceived(_ unsubscribe: MQTTUnsubscribePacket) {
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
        var writes: [SessionWrite] = [.forgetSubscriptions(unsubscribe.topicFilters)]
        if !unindexed.isEmpty { writes.append(.nodeIndex(adding: false, filters: unindexed)) }
        if !stored.isEmpty { writes.append(.storedSubscriptions(adding: false, filters: stored)) }
        store.send(writes)
        write(.unsubAck(MQTTSubAckPacket(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: codes)), flush: true)
    }

    /// `push/<id>` and `broadcast`: every session has them; pushes reach them without the index.
    func isAutomatic(_ filter: String) -> Bool {
        filter == "broadcast" || (filter.hasPrefix("push/") && filter.utf8.count == terminal.utf8.count + 5 && filter.hasSuffix(terminal))
    }

    /// The automatic subscription `filter` names (kept in two fields, not in `subscriptions`:
    /// an idle session then holds no dictionary at all).
    func automatic(_ filter: String) -> Subscription? {
        guard isAutomatic(filter) else { return nil }
        return filter == "broadcast" ? broadcastSubscription : pushSubscription
    }

    func setAutomatic(_ filter: String, _ subscription: Subscription?) {
        if filter == "broadcast" { broadcastSubscription = subscription } else { pushSubscription = subscription }
    }

    var member: LocalSubscriptions.Member { LocalSubscriptions.Member(terminal: terminal, epoch: epoch) }

    /// Adds a filter to the node's local index; true when the fleet index must learn it.
    func joinLocalIndex(_ filter: String) -> Bool {
        node.local.add(member, filter: filter)
    }

    func leaveLocalIndex(_ filter: String) -> Bool {
        node.local.remove(member, filter: filter)
    }

    /// Takes all of this connection's subscriptions out of the node's index.
    func leaveLocalIndex() {
        let unindexed = subscriptions.keys.filter { !isAutomatic($0) && leaveLocalIndex($0) }
        if !unindexed.isEmpty { store.send([.nodeIndex(adding: false, filters: unindexed)]) }
    }
}
