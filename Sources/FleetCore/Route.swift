/// Where a terminal is connected: the value of its route key (``FleetKeys/route(_:)``),
/// `node|epoch|connectedAt`. A string rather than a hash, so a batch of pushes reads all its
/// targets' routes with one MGET; node ids and epochs hold no `|`.
public struct Route: Hashable, Sendable {
    public var node: String
    /// The connection's epoch (``FleetClock/newEpoch()``).
    public var epoch: String
    /// Unix milliseconds.
    public var connectedAt: Int64

    public init(node: String, epoch: String, connectedAt: Int64) {
        self.node = node
        self.epoch = epoch
        self.connectedAt = connectedAt
    }

    public var encoded: String { "\(node)|\(epoch)|\(connectedAt)" }

    /// Nil for text that is not a route.
    public init?(decoding text: String) {
        let parts = text.split(separator: "|", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, let connectedAt = Int64(parts[2]) else { return nil }
        self.init(node: String(parts[0]), epoch: String(parts[1]), connectedAt: connectedAt)
    }

    /// The node of a route value, without decoding the rest (the push path reads only that).
    public static func node(in text: String) -> String? {
        guard let bar = text.utf8.firstIndex(of: UInt8(ascii: "|")), bar != text.startIndex else { return nil }
        return String(text[..<bar])
    }

    /// Lua: `route(key)` returns the node and epoch of a route key (nil, nil when absent), for
    /// the scripts that read routes.
    public static let luaReader = """
        local function route(key)
          local value = redis.call('GET', key)
          if not value then return nil, nil end
          return string.match(value, '^([^|]*)|([^|]*)|')
        end
        """
}
