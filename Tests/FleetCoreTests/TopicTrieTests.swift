import FleetCore
import FleetTestSupport
import MQTTCodec
import Testing

/// The topic trie and the fleet index built on it.
struct TopicTrieTests {
    static func matches(_ trie: TopicTrie<String>, _ topic: String) -> [String: Set<String>] {
        var result: [String: Set<String>] = [:]
        trie.forEachMatch(topic: topic) { filter, values in result[filter] = values }
        return result
    }

    @Test func matchesWildcardsLikeTheSpec() {
        var trie = TopicTrie<String>()
        for filter in ["a/b", "a/+", "a/#", "#", "+/+", "+", "a/b/c", "/a", "+/a", "a/"] { trie.insert(filter, for: filter) }
        #expect(Set(Self.matches(trie, "a/b").keys) == ["a/b", "a/+", "a/#", "#", "+/+"])
        #expect(Set(Self.matches(trie, "a").keys) == ["a/#", "#", "+"])  // a/# matches its parent level
        #expect(Set(Self.matches(trie, "/a").keys) == ["/a", "+/a", "#", "+/+"])
        #expect(Set(Self.matches(trie, "a/").keys) == ["a/", "a/+", "a/#", "#", "+/+"])
        #expect(Set(Self.matches(trie, "a/b/c").keys) == ["a/b/c", "a/#", "#"])
    }

    @Test func dollarTopicsAreNotMatchedByLeadingWildcards() {
        var trie = TopicTrie<String>()
        for filter in ["#", "+/x", "$SYS/#", "$SYS/+", "$x/#"] { trie.insert(filter, for: filter) }
        #expect(Set(Self.matches(trie, "$SYS/x").keys) == ["$SYS/#", "$SYS/+"])
        #expect(Set(Self.matches(trie, "$x").keys) == ["$x/#"])
    }

    @Test func agreesWithFilterMatchingOnRandomFiltersAndTopics() {
        var generator = SeededGenerator(seed: 0x5EED_0003)
        let levels = ["a", "b", "", "$c"]
        func topic() -> String {
            (0..<Int.random(in: 1...4, using: &generator)).map { _ in levels.randomElement(using: &generator)! }.joined(separator: "/")
        }
        var trie = TopicTrie<String>()
        var filters: Set<String> = []
        for _ in 0..<300 {
            var parts = topic().split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            for index in parts.indices where Bool.random(using: &generator) { parts[index] = "+" }
            if Bool.random(using: &generator) { parts[parts.count - 1] = "#" }
            let filter = parts.joined(separator: "/")
            guard MQTTTopic.isValidFilter(filter) else { continue }
            filters.insert(filter)
            trie.insert(filter, for: filter)
        }
        for _ in 0..<500 {
            let name = topic()
            let expected = filters.filter { MQTTTopic.matches(filter: $0, topic: name) }
            #expect(Set(Self.matches(trie, name).keys) == expected, "topic \(name)")
        }
    }

    @Test func insertAndRemoveReportFirstAndLastValues() {
        var trie = TopicTrie<String>()
        let first = trie.insert("s1", for: "x/+")
        let second = trie.insert("s2", for: "x/+")
        let removedOne = trie.remove("s1", for: "x/+")
        let removedNobody = trie.remove("nobody", for: "x/+")
        let removedLast = trie.remove("s2", for: "x/+")
        #expect(first && !second)
        #expect(!removedOne && !removedNobody && removedLast)
        #expect(trie.filterCount == 0)
        #expect(Self.matches(trie, "x/y").isEmpty)
    }

    @Test func indexRoutesToNodesSharesAndStoredFilters() {
        let index = SubscriptionIndex()
        index.apply(IndexChange(owner: "n1", operation: .add, filters: ["news/#", "$share/g/jobs/+"]))
        index.apply(IndexChange(owner: "n2", operation: .add, filters: ["news/sport", "$share/g/jobs/+"]))
        index.apply(IndexChange(owner: SubscriptionIndex.storedOwner, operation: .add, filters: ["news/+"]))
        let news = index.route(topic: "news/sport")
        #expect(news.nodes == ["n1": NodeTarget(ordinary: true), "n2": NodeTarget(ordinary: true)])
        #expect(news.storedFilters == ["news/+"])
        // One node of the share group gets the job, told which shared filter it serves.
        let job = index.route(topic: "jobs/a")
        #expect(job.nodes.count == 1)
        #expect(job.nodes.values.first == NodeTarget(shares: ["$share/g/jobs/+"]))
        #expect(index.route(topic: "other").nodes.isEmpty)
        // A node found dead or restarted is reset; a snapshot replaces an owner's set.
        index.apply(IndexChange(owner: "n1", operation: .reset, filters: []))
        #expect(index.route(topic: "news/sport").nodes == ["n2": NodeTarget(ordinary: true)])
        index.replace(owner: "n2", filters: ["weather"])
        #expect(index.route(topic: "news/sport").nodes.isEmpty)
        #expect(index.route(topic: "weather").nodes == ["n2": NodeTarget(ordinary: true)])
    }

    @Test func sharedFiltersParse() {
        #expect(SharedFilter("$share/g/a/+") == SharedFilter("$share/g/a/+"))
        #expect(SharedFilter("$share/g/a/+")?.group == "g")
        #expect(SharedFilter("$share/g/a/+")?.filter == "a/+")
        #expect(SharedFilter("$share/g") == nil)
        #expect(SharedFilter("$share//a") == nil)
        #expect(SharedFilter("$share/g+/a") == nil)
        #expect(SharedFilter("a/b") == nil)
    }
}
