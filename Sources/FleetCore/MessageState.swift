/// The delivery state of one message for one terminal, as recorded in Redis.
///
/// States only move forward: queued -> delivered -> acknowledged, or to expired or dropped.
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
}

extension MessageState {
    /// Order of the states: a state never moves to a lower rank (the transition script keeps
    /// the same order, built from this).
    public var rank: Int {
        switch self {
        case .queued: 1
        case .delivered: 2
        case .acknowledged, .expired, .dropped: 3
        }
    }
}

/// The fields of a message's status hash (``FleetKeys/messageStatus(_:)``): written by the
/// control node (at acceptance), the push nodes and the transition script, read by the API.
public enum MessageStatusField {
    public static let createdAt = "createdAt"
    /// `unicast`, `topic` or `broadcast`.
    public static let kind = "kind"
    public static let qos = "qos"
    public static let ttl = "ttl"
    /// Terminals addressed.
    public static let targets = "targets"
    /// Set once a topic push or broadcast went out.
    public static let complete = "complete"
    /// Push nodes a topic push or broadcast went to.
    public static let nodes = "nodes"
    /// Absent persistent sessions a topic push was stored for.
    public static let storedForSessions = "storedForSessions"
    /// Why a command stream entry was refused.
    public static let error = "error"

    /// The count of targets in `state`: a field named as the state.
    public static func count(_ state: MessageState) -> String { state.rawValue }

    /// Every count the API reports: targets, then one per state.
    public static let counts = [targets] + MessageState.allCases.map(count)
}
