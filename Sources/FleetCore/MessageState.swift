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
///
/// A unicast push keeps each target's state in the hash (``target(_:)``) and no counts: they
/// are derived when the status is read (``counts(ofTargets:)``), so a state change is one
/// field written. A topic push and a broadcast have no per-target states; their counts are
/// fields (a broadcast's `delivered` is incremented by the nodes that wrote it).
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

    /// What a target's state field starts with (the transition script is given it).
    public static let targetPrefix = "t:"

    /// The field of one target's state in a unicast push's status.
    public static func target(_ terminal: String) -> String { targetPrefix + terminal }

    /// The targets' states in a status hash: terminal -> state.
    public static func targetStates(in fields: [String: String]) -> [String: String] {
        var states: [String: String] = [:]
        for (field, state) in fields where field.hasPrefix(targetPrefix) { states[String(field.dropFirst(targetPrefix.count))] = state }
        return states
    }

    /// The per-state counts of a unicast push from its targets' states: `delivered` counts
    /// the targets that got it (acknowledged ones included), `queued` those still waiting.
    public static func counts(ofTargets states: some Sequence<String>) -> [String: Int64] {
        var counts = Dictionary(uniqueKeysWithValues: MessageState.allCases.map { (count($0), Int64(0)) })
        for state in states {
            guard let known = MessageState(rawValue: state) else { continue }
            counts[count(known), default: 0] += 1
            if known == .acknowledged { counts[count(.delivered), default: 0] += 1 }
        }
        return counts
    }
}
