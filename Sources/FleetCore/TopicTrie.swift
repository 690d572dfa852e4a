/// Topic filters, each holding a set of values, matched against topic names level by level.
///
/// Matching a topic costs O(levels x wildcard branches), not O(filters): a node routes each
/// message through the filters of all its sessions, and the fleet index routes each publish
/// through the filters of all nodes. Filters are not validated here (callers do that).
public struct TopicTrie<Value: Hashable & Sendable>: Sendable {
    struct Node: Sendable {
        var children: [Substring: Node] = [:]
        /// The whole filter ending at this node, set while `values` is not empty.
        var filter: String?
        var values: Set<Value> = []

        var isEmpty: Bool { children.isEmpty && values.isEmpty }
    }

    private var root = Node()
    /// Number of filters holding at least one value.
    public private(set) var filterCount = 0

    public init() {}

    /// Adds `value` under `filter`; returns whether the filter had no value before.
    @discardableResult
    public mutating func insert(_ value: Value, for filter: String) -> Bool {
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        let wasEmpty = Self.insert(value, filter: filter, levels: levels[...], into: &root)
        if wasEmpty { filterCount += 1 }
        return wasEmpty
    }

    private static func insert(_ value: Value, filter: String, levels: ArraySlice<Substring>, into node: inout Node) -> Bool {
        guard let level = levels.first else {
            node.filter = filter
            let wasEmpty = node.values.isEmpty
            node.values.insert(value)
            return wasEmpty
        }
        return insert(value, filter: filter, levels: levels.dropFirst(), into: &node.children[level, default: Node()])
    }

    /// Removes `value` from `filter`; returns whether the filter has no value left (and had it).
    @discardableResult
    public mutating func remove(_ value: Value, for filter: String) -> Bool {
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        let emptied = Self.remove(value, levels: levels[...], from: &root)
        if emptied { filterCount -= 1 }
        return emptied
    }

    private static func remove(_ value: Value, levels: ArraySlice<Substring>, from node: inout Node) -> Bool {
        guard let level = levels.first else {
            guard node.values.remove(value) != nil else { return false }
            if node.values.isEmpty {
                node.filter = nil
                return true
            }
            return false
        }
        guard var child = node.children[level] else { return false }
        // Take the child out so it is mutated in place, not copied.
        node.children[level] = nil
        let emptied = remove(value, levels: levels.dropFirst(), from: &child)
        if !child.isEmpty { node.children[level] = child }
        return emptied
    }

    /// The values of `filter` exactly (no wildcard matching).
    public func values(for filter: String) -> Set<Value> {
        var node = root
        for level in filter.split(separator: "/", omittingEmptySubsequences: false) {
            guard let child = node.children[level] else { return [] }
            node = child
        }
        return node.values
    }

    /// Calls `body` with every filter holding a value.
    public func forEachFilter(_ body: (String) -> Void) {
        func visit(_ node: Node) {
            if let filter = node.filter { body(filter) }
            for child in node.children.values { visit(child) }
        }
        visit(root)
    }

    /// Calls `body` with every filter matching `topic` and its values. A filter starting with
    /// a wildcard does not match a topic starting with `$` (MQTT 4.7.2).
    public func forEachMatch(topic: String, _ body: (_ filter: String, _ values: Set<Value>) -> Void) {
        let levels = topic.split(separator: "/", omittingEmptySubsequences: false)
        Self.match(root, levels: levels[...], dollar: topic.hasPrefix("$"), body)
    }

    private static func match(
        _ node: Node, levels: ArraySlice<Substring>, dollar: Bool, _ body: (_ filter: String, _ values: Set<Value>) -> Void
    ) {
        if !dollar, let multi = node.children["#"], let filter = multi.filter {
            // `a/#` matches `a` and everything below it.
            body(filter, multi.values)
        }
        guard let level = levels.first else {
            if let filter = node.filter { body(filter, node.values) }
            return
        }
        let rest = levels.dropFirst()
        if let exact = node.children[level] { match(exact, levels: rest, dollar: false, body) }
        if !dollar, level != "+", let single = node.children["+"] { match(single, levels: rest, dollar: false, body) }
    }
}

/// A shared subscription filter `$share/<group>/<filter>` (MQTT 5.0 4.8.2).
public struct SharedFilter: Hashable, Sendable {
    public var group: String
    public var filter: String

    /// Parses `$share/group/filter`; nil for any other filter or a malformed one.
    public init?(_ text: String) {
        guard text.hasPrefix("$share/") else { return nil }
        let rest = text.dropFirst("$share/".count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let group = rest[..<slash]
        let filter = rest[rest.index(after: slash)...]
        guard !group.isEmpty, !group.contains("+"), !group.contains("#"), !filter.isEmpty else { return nil }
        self.group = String(group)
        self.filter = String(filter)
    }

    /// The whole `$share/group/filter` text.
    public var text: String { "$share/\(group)/\(filter)" }
}
