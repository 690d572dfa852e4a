/// Topic name and topic filter rules (MQTT 3.1.1 section 4.7, 5.0 section 4.7).
public enum MQTTTopic {
    /// Whether `filter` is a valid topic filter: non-empty, `#` only as the whole last level,
    /// `+` only as a whole level.
    public static func isValidFilter(_ filter: String) -> Bool {
        guard !filter.isEmpty else { return false }
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
        if topic.hasPrefix("$") && (filter.hasPrefix("+") || filter.hasPrefix("#")) { return false }
        let f = filter.split(separator: "/", omittingEmptySubsequences: false)
        let t = topic.split(separator: "/", omittingEmptySubsequences: false)
        var index = 0
        while index < f.count {
            if f[index] == "#" { return true }
            guard index < t.count else { return false }
            if f[index] != "+" && f[index] != t[index] { return false }
            index += 1
        }
        return index == t.count
    }
}
