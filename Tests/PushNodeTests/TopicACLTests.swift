import MQTTCodec
import Testing

@testable import PushNode

struct TopicACLTests {
    @Test func subscribeNeedsAPatternCoveringTheWholeFilter() {
        let acl = TopicACL(subscribe: ["news/#", "dev/+/up", "home/%c/#"], publish: [], open: false)
        #expect(acl.maySubscribe("push/t1", terminal: "t1"))
        #expect(!acl.maySubscribe("push/t2", terminal: "t1"))
        #expect(acl.maySubscribe("broadcast", terminal: "t1"))
        #expect(acl.maySubscribe("news/#", terminal: "t1"))
        #expect(acl.maySubscribe("news/a/+", terminal: "t1"))
        #expect(acl.maySubscribe("news", terminal: "t1"))  // news/# matches its parent level
        #expect(!acl.maySubscribe("#", terminal: "t1"))
        #expect(!acl.maySubscribe("+/a", terminal: "t1"))
        #expect(acl.maySubscribe("dev/+/up", terminal: "t1"))
        #expect(!acl.maySubscribe("dev/x/#", terminal: "t1"))
        #expect(acl.maySubscribe("home/t1/lamp", terminal: "t1"))
        #expect(!acl.maySubscribe("home/t2/lamp", terminal: "t1"))
        #expect(acl.maySubscribe("$share/g/news/a", terminal: "t1"))  // the shared filter's own filter counts
        #expect(!acl.maySubscribe("$share/g/other", terminal: "t1"))
    }

    @Test func publishNeedsAMatchingPatternAndNeverReachesSYS() {
        let acl = TopicACL(subscribe: [], publish: ["dev/%c/up", "chat/+"], open: false)
        #expect(acl.mayPublish("dev/t1/up", terminal: "t1"))
        #expect(!acl.mayPublish("dev/t2/up", terminal: "t1"))
        #expect(acl.mayPublish("chat/room", terminal: "t1"))
        #expect(!acl.mayPublish("chat/room/x", terminal: "t1"))
        #expect(!acl.mayPublish("push/t1", terminal: "t1"))
        let open = TopicACL(subscribe: [], publish: [], open: true)
        #expect(open.mayPublish("anything/at/all", terminal: "t1"))
        #expect(open.maySubscribe("#", terminal: "t1"))
        #expect(!open.mayPublish("$SYS/broker/load", terminal: "t1"))
    }

    @Test func subscriptionOptionsSurviveRedis() {
        let all = Subscription(qos: .exactlyOnce, noLocal: true, retainAsPublished: true, identifier: 268_435_455)
        #expect(all.encoded == "2nr#268435455")
        #expect(Subscription(encoded: all.encoded) == all)
        #expect(Subscription(encoded: "1") == Subscription(qos: .atLeastOnce))
        #expect(Subscription(encoded: "0r") == Subscription(qos: .atMostOnce, retainAsPublished: true))
        #expect(Subscription(encoded: "") == nil)
        #expect(Subscription(encoded: "7") == nil)
    }
}
