/// Topic name and topic filter rules (MQTT 3.1.1 section 4.7, 5.0 section 4.7).
public enum MQTTTopic {
    /// Levels a topic name or filter may have by default (EMQX's default too): code that walks
    /// a topic level by level stays shallow whatever a client sends.
    public static let defaultMaximumLevels = 128

    /// The number of levels of a topic name or filter (`a/b/c`: 3), counted without splitting.
    public static func levelCount(_ topic: String) -> Int {
        var count = 1
        for byte in topic.utf8 where byte == UInt8(ascii: "/") { count += 1 }
        return count
    }

    /// Whether `topic` contains a wildcard character (`+` or `#`).
    public static func hasWildcard(_ topic: String) -> Bool {
        topic.utf8.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
    }

    /// Whether `topic` can be published to: non-empty, without wildcards.
    public static func isValidTopicName(_ topic: String) -> Bool {
        // No null character either [MQTT-4.7.3-2] (a name from the API, not only a packet's).
        !topic.isEmpty && !hasWildcard(topic) && !topic.utf8.contains(0)
    }

    /// Whether `filter` is a valid topic filter: non-empty, `#` only as the whole last level,
    /// `+` only as a whole level.
    public static func isValidFilter(_ filter: String) -> Bool {
        guard !filter.isEmpty, !filter.utf8.contains(0) else { return false }
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (index, level) in levels.enumerated() {
            if level.contains("#") && (level != "#" || index != levels.count - 1) { return false }
            if level.contains("+") && level != "+" { return false }
        }
        return true
    }

    /// Whether `filter` matches the topic name `topic`. A filter starting with a wildcard does
    /// not match topics starting with `$`.
    public static func matches(filter: String, topic: String) -> Bool {
        covers(pattern: filter, filter: topic)
    }

    /// Whether the filter `pattern` matches every topic that `filter` matches (`news/#` covers
    /// `news/sport/+`, not `#`). With a topic name for `filter` this is ``matches(filter:topic:)``:
    /// the one implementation of MQTT's matching rules (4.7) that the topic ACL and the
    /// sessions use; the fleet's topic trie is held to it by a randomized test.
    public static func covers(pattern: String, filter: String) -> Bool {
        // A filter starting with a wildcard does not reach topics starting with `$` (4.7.2).
        if filter.hasPrefix("$") != pattern.hasPrefix("$") && (pattern.hasPrefix("+") || pattern.hasPrefix("#")) { return false }
        let p = pattern.split(separator: "/", omittingEmptySubsequences: false)
        let f = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (index, level) in p.enumerated() {
            // `a/#` takes `a` and everything below it.
            if level == "#" { return true }
            guard index < f.count, f[index] != "#" else { return false }
            if level == "+" { continue }
            if level != f[index] { return false }
        }
        return p.count == f.count
    }
}
