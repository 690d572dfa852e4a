import FleetCore
import NIOConcurrencyHelpers

/// The subscriptions of this node's sessions, to find the sessions a routed message is for.
///
/// Ordinary filters go into a topic trie; shared ones (`$share/group/filter`) are kept by
/// their whole text, since the publishing node names the shared filter this node serves and
/// this node hands the message to one member, in turn.
final class LocalSubscriptions: Sendable {
    /// One session: a terminal and its connection epoch (a takeover on the same node must not
    /// lose the new connection's entries when the old one removes its own).
    struct Member: Hashable, Sendable {
        var terminal: String
        var epoch: String
    }

    private struct Shared {
        var members: [Member] = []
        var next = 0
    }

    private struct State {
        var trie = TopicTrie<Member>()
        var shared: [String: Shared] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// Adds a subscription; returns whether it is the node's first for `filter` (which the
    /// fleet index must then learn).
    func add(_ member: Member, filter: String) -> Bool {
        state.withLockedValue { state in
            guard SharedFilter(filter) != nil else { return state.trie.insert(member, for: filter) }
            var group = state.shared[filter] ?? Shared()
            guard !group.members.contains(member) else { return false }
            group.members.append(member)
            state.shared[filter] = group
            return group.members.count == 1
        }
    }

    /// Removes a subscription; returns whether it was the node's last for `filter`.
    func remove(_ member: Member, filter: String) -> Bool {
        state.withLockedValue { state in
            guard SharedFilter(filter) != nil else { return state.trie.remove(member, for: filter) }
            guard var group = state.shared[filter], let position = group.members.firstIndex(of: member) else { return false }
            group.members.remove(at: position)
            if group.members.isEmpty {
                state.shared[filter] = nil
                return true
            }
            state.shared[filter] = group
            return false
        }
    }

    /// The sessions with an ordinary subscription matching `topic`, each once.
    func members(matching topic: String) -> Set<Member> {
        state.withLockedValue { state in
            var result = Set<Member>()
            state.trie.forEachMatch(topic: topic) { _, members in result.formUnion(members) }
            return result
        }
    }

    /// The next member of a shared subscription, round robin.
    func nextMember(of sharedFilter: String) -> Member? {
        state.withLockedValue { state in
            guard var group = state.shared[sharedFilter], !group.members.isEmpty else { return nil }
            let member = group.members[group.next % group.members.count]
            group.next = (group.next + 1) % group.members.count
            state.shared[sharedFilter] = group
            return member
        }
    }

    /// Every filter with at least one subscription here (ordinary and shared), for the
    /// node's index set after Redis lost it.
    var filters: [String] {
        state.withLockedValue { state in
            var result: [String] = Array(state.shared.keys)
            state.trie.forEachFilter { result.append($0) }
            return result
        }
    }
}
