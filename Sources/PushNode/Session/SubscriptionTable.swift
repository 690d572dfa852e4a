import FleetCore
import MQTTCodec

/// One session's subscriptions and how a message goes to it through them. Pure: the session
/// asks it, and tells it what SUBSCRIBE and UNSUBSCRIBE changed.
///
/// Every session also has two automatic subscriptions, `push/<terminal>` and `broadcast`, at
/// QoS 1 until the terminal subscribes to them itself (its options then stand) or
/// unsubscribes from them (pushes then wait in its list, broadcasts pass it by). They live in
/// two fields, not in the dictionary: an idle session holds no dictionary at all.
struct SubscriptionTable {
    /// Topic filter -> subscription, without the automatic ones.
    private(set) var filters: [String: Subscription] = [:]
    private var push: Subscription? = Subscription(qos: .atLeastOnce)
    private var broadcast: Subscription? = Subscription(qos: .atLeastOnce)

    /// Subscriptions besides the automatic ones.
    var count: Int { filters.count }

    /// `push/<terminal>` and `broadcast`: every session has them; pushes reach them without
    /// the fleet index.
    static func isAutomatic(_ filter: String, terminal: String) -> Bool {
        filter == "broadcast"
            || (filter.hasPrefix("push/") && filter.utf8.count == terminal.utf8.count + 5 && filter.hasSuffix(terminal))
    }

    /// The subscription for `filter`, automatic or not.
    func subscription(_ filter: String, terminal: String) -> Subscription? {
        guard Self.isAutomatic(filter, terminal: terminal) else { return filters[filter] }
        return filter == "broadcast" ? broadcast : push
    }

    /// Subscribes (or changes the options of) `filter`; returns whether it is new. An
    /// automatic filter is never new: every session has it.
    @discardableResult
    mutating func subscribe(_ filter: String, _ subscription: Subscription, terminal: String) -> Bool {
        guard Self.isAutomatic(filter, terminal: terminal) else { return filters.updateValue(subscription, forKey: filter) == nil }
        if filter == "broadcast" { broadcast = subscription } else { push = subscription }
        return false
    }

    /// Unsubscribes `filter`; returns whether the session had it.
    mutating func unsubscribe(_ filter: String, terminal: String) -> Bool {
        guard Self.isAutomatic(filter, terminal: terminal) else { return filters.removeValue(forKey: filter) != nil }
        defer { if filter == "broadcast" { broadcast = nil } else { push = nil } }
        return subscription(filter, terminal: terminal) != nil
    }

    /// How `message` goes to this session, or nil when no subscription takes it. Overlapping
    /// subscriptions deliver once, at the highest QoS, with every subscription identifier
    /// (MQTT 5 3.3.4); no local leaves out the terminal's own messages; a shared subscription
    /// (`shared`: the one this session was picked for) delivers on its own.
    func delivery(for message: StoredMessage, shared: String?, terminal: String) -> Delivery? {
        let published = MQTTQoS(rawValue: min(message.qos, 2)) ?? .atLeastOnce
        let retained = message.retain == true
        if let shared {
            guard let subscription = filters[shared] else { return nil }
            return Delivery(
                qos: min(subscription.qos, published), retain: subscription.retainAsPublished && retained,
                subscriptionIdentifiers: subscription.identifier.map { [$0] } ?? [])
        }
        var best: MQTTQoS?
        var retain = false
        var identifiers: [UInt32] = []
        let own = message.origin == terminal
        if Self.isAutomatic(message.topic, terminal: terminal), let subscription = self.subscription(message.topic, terminal: terminal),
            !(subscription.noLocal && own)
        {
            best = subscription.qos
            retain = subscription.retainAsPublished && retained
            if let identifier = subscription.identifier { identifiers.append(identifier) }
        }
        for (filter, subscription) in filters where !filter.hasPrefix("$share/") {
            guard MQTTTopic.matches(filter: filter, topic: message.topic) else { continue }
            if subscription.noLocal && own { continue }
            best = max(best ?? subscription.qos, subscription.qos)
            if subscription.retainAsPublished && retained { retain = true }
            if let identifier = subscription.identifier { identifiers.append(identifier) }
        }
        guard let best else { return nil }
        return Delivery(qos: min(best, published), retain: retain, subscriptionIdentifiers: identifiers)
    }
}
