import Foundation

/// Wall-clock helpers and id generation.
public enum FleetClock {
    /// Unix time in milliseconds.
    public static func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
    /// Unix time in seconds.
    public static func nowSeconds() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// A new message id: milliseconds and 64 random bits, both hex, sortable by time.
    public static func newMessageID() -> String {
        let ms = String(UInt64(nowMillis()), radix: 16)
        let random = String(UInt64.random(in: .min ... .max), radix: 16)
        return ms + "-" + String(repeating: "0", count: 16 - random.count) + random
    }

    /// A new connection epoch: unique across nodes and restarts.
    public static func newEpoch() -> String {
        String(UInt64(nowMillis()), radix: 36) + String(UInt64.random(in: .min ... .max), radix: 36)
    }
}
