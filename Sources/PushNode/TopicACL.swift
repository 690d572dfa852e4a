import FleetCore
import Foundation
import MQTTCodec

/// Which topics a terminal may subscribe to and publish on.
///
/// Patterns are MQTT topic filters in which `%c` stands for the terminal's id. A subscription
/// is allowed when an allowed pattern covers every topic its filter can match (`news/#`
/// allows `news/sport/+`, not `#`); a publish when an allowed pattern matches its topic. An
/// open ACL (`--allow-anonymous`) allows everything except publishing to `$SYS/...`.
struct TopicACL: Sendable {
    var subscribePatterns: [String]
    var publishPatterns: [String]
    var open: Bool

    /// The patterns every terminal gets: its own push topic and the broadcast topic.
    static let defaultSubscribePatterns = ["push/%c", "broadcast"]

    init(subscribe: [String], publish: [String], open: Bool) {
        self.subscribePatterns = Self.defaultSubscribePatterns + subscribe
        self.publishPatterns = publish
        self.open = open
    }

    func maySubscribe(_ filter: String, terminal: String) -> Bool {
        if open { return true }
        let filter = SharedFilter(filter)?.filter ?? filter
        return subscribePatterns.contains { MQTTTopic.covers(pattern: $0.replacingClientID(with: terminal), filter: filter) }
    }

    func mayPublish(_ topic: String, terminal: String) -> Bool {
        if topic.hasPrefix("$SYS/") || topic == "$SYS" { return false }
        if open { return true }
        return publishPatterns.contains { MQTTTopic.matches(filter: $0.replacingClientID(with: terminal), topic: topic) }
    }
}

extension String {
    fileprivate func replacingClientID(with terminal: String) -> String {
        contains("%c") ? replacingOccurrences(of: "%c", with: terminal) : self
    }
}
