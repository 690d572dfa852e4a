import Foundation
import NIOConcurrencyHelpers

/// Which push nodes have a subscription matching which filter: the fleet's routing table for
/// terminal publishes, replicated in every node's memory.
///
/// Redis holds one SET of filters per owner (``FleetKeys/index(_:)``); an owner is a push node
/// id, or ``storedOwner`` for filters of persistent sessions whose messages are stored in
/// Redis while they are away. Every change that adds a filter to or removes it from an
/// owner's set is announced on ``FleetKeys/indexChannel`` (by ``FleetScripts/indexUpdate``), and
/// every node applies those changes here. A node adds a filter when its first session
/// subscribes to it and removes it when its last session leaves it, so the table grows with
/// the distinct filters per node, not with sessions.
public final class SubscriptionIndex: Sendable {
    /// The owner standing for persistent sessions' subscriptions (offline delivery).
    public static let storedOwner = "*"

    struct Entry: Hashable, Sendable {
        var owner: String
        /// The share group, for `$share/group/filter`.
        var group: String?
    }

    private struct State {
        var trie = TopicTrie<Entry>()
        /// owner -> its filters as announced (shared ones in their `$share/...` form).
        var owners: [String: Set<String>] = [:]
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Replaces everything known about `owner` (a snapshot read from Redis).
    public func replace(owner: String, filters: some Sequence<String>) {
        let new = Set(filters)
        state.withLockedValue { state in
            let old = state.owners[owner] ?? []
            for filter in old.subtracting(new) { Self.remove(owner: owner, filter: filter, from: &state) }
            for filter in new.subtracting(old) { Self.add(owner: owner, filter: filter, to: &state) }
        }
    }

    /// Applies an announced change.
    public func apply(_ change: IndexChange) {
        state.withLockedValue { state in
            switch change.operation {
            case .add:
                for filter in change.filters { Self.add(owner: change.owner, filter: filter, to: &state) }
            case .remove:
                for filter in change.filters { Self.remove(owner: change.owner, filter: filter, from: &state) }
            case .reset:
                for filter in state.owners[change.owner] ?? [] { Self.remove(owner: change.owner, filter: filter, from: &state) }
                for filter in change.filters { Self.add(owner: change.owner, filter: filter, to: &state) }
            }
        }
    }

    private static func add(owner: String, filter: String, to state: inout State) {
        guard state.owners[owner, default: []].insert(filter).inserted else { return }
        if let shared = SharedFilter(filter) {
            state.trie.insert(Entry(owner: owner, group: shared.group), for: shared.filter)
        } else {
            state.trie.insert(Entry(owner: owner), for: filter)
        }
    }

    private static func remove(owner: String, filter: String, from state: inout State) {
        guard state.owners[owner]?.remove(filter) != nil else { return }
        if state.owners[owner]?.isEmpty == true { state.owners[owner] = nil }
        if let shared = SharedFilter(filter) {
            state.trie.remove(Entry(owner: owner, group: shared.group), for: shared.filter)
        } else {
            state.trie.remove(Entry(owner: owner), for: filter)
        }
    }

    /// Where a message published on `topic` must go.
    ///
    /// Every node with a matching ordinary subscription gets it once. For each matching share
    /// group one node among those holding members is picked at random, and told which shared
    /// filters it serves. Filters of ``storedOwner`` are listed for offline storage.
    public func route(topic: String) -> PublishRoute {
        var route = PublishRoute()
        state.withLockedValue { state in
            var groups: [String: [String]] = [:]  // "$share/g/f" -> owners
            state.trie.forEachMatch(topic: topic) { filter, entries in
                for entry in entries {
                    if let group = entry.group {
                        guard entry.owner != Self.storedOwner else { continue }
                        groups["$share/\(group)/\(filter)", default: []].append(entry.owner)
                    } else if entry.owner == Self.storedOwner {
                        route.storedFilters.append(filter)
                    } else {
                        route.nodes[entry.owner, default: NodeTarget()].ordinary = true
                    }
                }
            }
            for (shared, owners) in groups {
                route.nodes[owners.randomElement()!, default: NodeTarget()].shares.append(shared)
            }
        }
        return route
    }

    /// The owners known, with their number of filters (for diagnostics).
    public var summary: [String: Int] {
        state.withLockedValue { $0.owners.mapValues(\.count) }
    }
}

/// The nodes (and offline filters) one published message goes to.
public struct PublishRoute: Sendable, Equatable {
    public var nodes: [String: NodeTarget] = [:]
    /// Filters of persistent sessions whose members may be offline.
    public var storedFilters: [String] = []

    public init() {}
}

/// What one node does with a routed message.
public struct NodeTarget: Sendable, Hashable, Codable {
    /// Deliver to every local session with a matching ordinary subscription.
    public var ordinary = false
    /// Shared filters (`$share/group/filter`) this node delivers for, to one member each.
    public var shares: [String] = []

    public init(ordinary: Bool = false, shares: [String] = []) {
        self.ordinary = ordinary
        self.shares = shares
    }
}

/// A change to one owner's filters, announced on the index channel.
public struct IndexChange: Codable, Sendable, Equatable {
    public enum Operation: String, Codable, Sendable {
        case add = "+"
        case remove = "-"
        /// The owner's filters are exactly `filters` (a node restarted or was found dead).
        case reset = "="
    }

    public var owner: String
    public var operation: Operation
    public var filters: [String]

    public init(owner: String, operation: Operation, filters: [String]) {
        self.owner = owner
        self.operation = operation
        self.filters = filters
    }

    enum CodingKeys: String, CodingKey {
        case owner
        case operation = "op"
        case filters
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        owner = try container.decode(String.self, forKey: .owner)
        operation = try container.decode(Operation.self, forKey: .operation)
        // Lua's cjson writes an empty list as `{}`, or the script leaves it out.
        filters = (try? container.decodeIfPresent([String].self, forKey: .filters)) ?? []
    }

    public static func decode(_ bytes: [UInt8]) -> IndexChange? {
        try? FleetJSON.decoder.decode(IndexChange.self, from: Data(bytes))
    }
}
