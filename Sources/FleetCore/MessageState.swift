/// The delivery state of one message for one terminal, as recorded in Redis.
///
/// States only move forward: queued -> delivered -> acknowledged, or to expired, dropped or
/// replaced.
public enum MessageState: String, Codable, Sendable, CaseIterable {
    /// Stored in the terminal's list, not yet sent.
    case queued
    /// Written to the terminal's connection (QoS 0 ends here).
    case delivered
    /// The terminal acknowledged it (PUBACK).
    case acknowledged
    /// Its ttl passed before it was acknowledged.
    case expired
    /// Not stored: the terminal was offline for an online-only push, or the list cap pushed it out.
    case dropped
    /// Taken out of the terminal's list, unsent, by a newer push with the same collapse key.
    case replaced
    /// Taken out of the terminal's list, unsent, when the push was cancelled.
    case withdrawn
}

extension MessageState {
    /// Order of the states: a target's state never moves to a lower rank (the status reader
    /// takes the highest recorded, ``MessageStatusField/state(of:)``).
    public var rank: Int {
        switch self {
        case .queued: 1
        case .delivered: 2
        case .acknowledged, .expired, .dropped, .replaced, .withdrawn: 3
        }
    }
}
