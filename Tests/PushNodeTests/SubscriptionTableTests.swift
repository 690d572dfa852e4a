import FleetCore
import MQTTCodec
import Testing

@testable import PushNode

/// A session's subscriptions: automatic ones, overlaps, no local, shared, retain as published.
struct SubscriptionTableTests {
    let terminal = "t1"

    func message(_ topic: String, qos: UInt8 = 2, origin: String? = nil, retain: Bool = false) -> StoredMessage {
        var message = StoredMessage(id: "m", qos: qos, expiresAt: 0, topic: topic, payload: [1])
        message.origin = origin
        message.retain = retain ? true : nil
        return message
    }

    @Test func theAutomaticSubscriptionsTakePushesAndBroadcastsUntilUnsubscribed() {
        var table = SubscriptionTable()
        #expect(table.count == 0)
        #expect(table.delivery(for: message("push/t1"), shared: nil, terminal: terminal)?.qos == .atLeastOnce)
        #expect(table.delivery(for: message("broadcast"), shared: nil, terminal: terminal)?.qos == .atLeastOnce)
        // Another terminal's push topic is not automatic for this one.
        #expect(!SubscriptionTable.isAutomatic("push/t12", terminal: terminal))
        #expect(table.delivery(for: message("push/t12"), shared: nil, terminal: terminal) == nil)
        // Subscribed at QoS 2 by the terminal: its options stand, and it is not "new".
        let pushIsNew = table.subscribe("push/t1", Subscription(qos: .exactlyOnce), terminal: terminal)
        #expect(!pushIsNew)
        #expect(table.delivery(for: message("push/t1"), shared: nil, terminal: terminal)?.qos == .exactlyOnce)
        #expect(table.count == 0)
        let hadBroadcast = table.unsubscribe("broadcast", terminal: terminal)
        #expect(hadBroadcast)
        let hadBroadcastAgain = table.unsubscribe("broadcast", terminal: terminal)
        #expect(!hadBroadcastAgain)
        #expect(table.delivery(for: message("broadcast"), shared: nil, terminal: terminal) == nil)
    }

    @Test func overlappingFiltersDeliverOnceAtTheHighestQoSCappedByTheMessage() {
        var table = SubscriptionTable()
        let plusIsNew = table.subscribe("a/+", Subscription(qos: .atMostOnce, identifier: 1), terminal: terminal)
        #expect(plusIsNew)
        let hashIsNew = table.subscribe("a/#", Subscription(qos: .exactlyOnce, identifier: 2), terminal: terminal)
        #expect(hashIsNew)
        let hashAgainIsNew = table.subscribe("a/#", Subscription(qos: .exactlyOnce, identifier: 3), terminal: terminal)
        #expect(!hashAgainIsNew)
        let both = table.delivery(for: message("a/b", qos: 1), shared: nil, terminal: terminal)
        #expect(both?.qos == .atLeastOnce)
        #expect(both?.subscriptionIdentifiers.sorted() == [1, 3])
        #expect(table.delivery(for: message("b"), shared: nil, terminal: terminal) == nil)
    }

    @Test func noLocalLeavesOutTheTerminalsOwnMessagesOnly() {
        var table = SubscriptionTable()
        table.subscribe("chat/#", Subscription(qos: .atLeastOnce, noLocal: true), terminal: terminal)
        #expect(table.delivery(for: message("chat/x", origin: "t1"), shared: nil, terminal: terminal) == nil)
        #expect(table.delivery(for: message("chat/x", origin: "t2"), shared: nil, terminal: terminal) != nil)
        // Another subscription without no local still takes it.
        table.subscribe("chat/+", Subscription(qos: .atMostOnce), terminal: terminal)
        #expect(table.delivery(for: message("chat/x", origin: "t1"), shared: nil, terminal: terminal)?.qos == .atMostOnce)
    }

    @Test func aSharedSubscriptionDeliversOnlyWhenThisSessionWasPickedForIt() {
        var table = SubscriptionTable()
        table.subscribe("$share/g/jobs/#", Subscription(qos: .atLeastOnce, identifier: 9), terminal: terminal)
        #expect(table.delivery(for: message("jobs/1"), shared: nil, terminal: terminal) == nil)
        let picked = table.delivery(for: message("jobs/1"), shared: "$share/g/jobs/#", terminal: terminal)
        #expect(picked?.qos == .atLeastOnce && picked?.subscriptionIdentifiers == [9])
        #expect(table.delivery(for: message("jobs/1"), shared: "$share/other/jobs/#", terminal: terminal) == nil)
    }

    @Test func retainAsPublishedKeepsTheFlagOtherwiseItIsCleared() {
        var table = SubscriptionTable()
        table.subscribe("r/a", Subscription(qos: .atLeastOnce), terminal: terminal)
        #expect(table.delivery(for: message("r/a", retain: true), shared: nil, terminal: terminal)?.retain == false)
        table.subscribe("r/+", Subscription(qos: .atLeastOnce, retainAsPublished: true), terminal: terminal)
        #expect(table.delivery(for: message("r/a", retain: true), shared: nil, terminal: terminal)?.retain == true)
        #expect(table.delivery(for: message("r/a"), shared: nil, terminal: terminal)?.retain == false)
    }
}
