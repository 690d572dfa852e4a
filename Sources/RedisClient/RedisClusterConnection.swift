import Logging
import NIOCore

/// A client of a Redis Cluster: one ``RedisConnection`` per master, each command sent to the
/// master that serves the slot of its keys, the commands of a pipeline grouped per master (one
/// write each) and their replies put back in order. The slot map comes from `CLUSTER SLOTS`
/// (asked of the seeds, then of any known node) and is read again when a node answers MOVED
/// (the command then goes to the node it names); an ASK (a slot being migrated) sends that one
/// command to the node named, after ASKING. Commands to one slot keep their order; commands
/// to different slots are on different connections and do not.
///
/// Groundwork for issue 14: the fleet's nodes do not use it yet (their pipelines mix slots in
/// ways that need splitting first).
public actor RedisClusterConnection {
    private let seeds: [RedisClusterSlots.Node]
    private let template: RedisConfiguration
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let scripts: [RedisScript]
    private var map = RedisClusterSlots.Map()
    private var connections: [RedisClusterSlots.Node: RedisConnection] = [:]
    /// Redirects one command may follow before it fails.
    public static let maximumRedirects = 5

    /// - Parameters:
    ///   - seeds: any nodes of the cluster; one that answers is enough.
    ///   - configuration: password, database and timeouts for every node (its host and port
    ///     are not used).
    public init(
        seeds: [RedisClusterSlots.Node], configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger,
        scripts: [RedisScript] = []
    ) {
        self.seeds = seeds
        self.template = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.scripts = scripts
    }

    /// The slot map as last read.
    public var slots: RedisClusterSlots.Map { map }

    public func send(_ command: RedisCommand) async throws -> RedisReply {
        try await pipeline([command])[0]
    }

    public func send(_ name: String, _ arguments: String...) async throws -> RedisReply {
        try await send(RedisCommand(name, arguments))
    }

    /// Sends `commands` (each one's keys in one slot), grouped per master, and returns their
    /// replies in order; error replies are returned in place. Throws ``RedisError`` when a
    /// command's keys span slots or the cluster cannot be reached.
    public func pipeline(_ commands: [RedisCommand]) async throws -> [RedisReply] {
        if map.nodes.isEmpty { try await refresh() }
        let slots = try commands.map { try $0.slot() }
        var replies = [RedisReply](repeating: .null, count: commands.count)
        var groups: [RedisClusterSlots.Node: [Int]] = [:]
        for (index, slot) in slots.enumerated() {
            guard let node = slot.flatMap(map.node(for:)) ?? map.nodes.first else {
                throw RedisError(.unavailable, "no node serves slot \(slot ?? -1)")
            }
            groups[node, default: []].append(index)
        }
        try await withThrowingTaskGroup(of: (indices: [Int], replies: [RedisReply]).self) { group in
            for (node, indices) in groups {
                let connection = connection(to: node)
                let batch = indices.map { commands[$0] }
                group.addTask { (indices, try await connection.pipeline(batch)) }
            }
            for try await (indices, answered) in group {
                for (index, reply) in zip(indices, answered) { replies[index] = reply }
            }
        }
        // Redirected commands, one at a time in their order.
        for index in replies.indices where Self.redirect(replies[index]) != nil {
            replies[index] = try await follow(commands[index], from: replies[index])
        }
        return replies
    }

    /// MOVED or ASK, and where to.
    private static func redirect(_ reply: RedisReply) -> (ask: Bool, node: RedisClusterSlots.Node)? {
        guard case .error(let message) = reply else { return nil }
        let parts = message.split(separator: " ")
        guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK", let colon = parts[2].lastIndex(of: ":"),
            let port = Int(parts[2][parts[2].index(after: colon)...])
        else { return nil }
        return (parts[0] == "ASK", RedisClusterSlots.Node(host: String(parts[2][..<colon]), port: port))
    }

    private func follow(_ command: RedisCommand, from first: RedisReply) async throws -> RedisReply {
        var reply = first
        for _ in 0..<Self.maximumRedirects {
            guard let (ask, node) = Self.redirect(reply) else { return reply }
            if ask {
                reply = try await connection(to: node).pipeline([RedisCommand("ASKING"), command])[1]
            } else {
                // The slot moved: the whole map is read again (a migration moves many).
                try await refresh()
                reply = try await connection(to: node).pipeline([command])[0]
            }
        }
        throw RedisError(.tooManyRedirects, "\(command.name) redirected \(Self.maximumRedirects) times, last: \(reply)")
    }

    /// Reads the slot map from the first node that answers: the seeds, then the known nodes.
    public func refresh() async throws {
        var lastError: (any Error)?
        for node in seeds + map.nodes.filter({ !seeds.contains($0) }) {
            do {
                let reply = try await connection(to: node).pipeline([RedisCommand("CLUSTER", "SLOTS")])[0]
                if case .error(let message) = reply { throw RedisError(.server, message) }
                let fresh = try RedisClusterSlots.Map(clusterSlots: reply)
                guard !fresh.nodes.isEmpty else { throw RedisError(.unexpectedReply, "CLUSTER SLOTS named no node") }
                if fresh != map { logger.info("redis cluster slot map read", metadata: ["masters": "\(fresh.nodes.count)"]) }
                map = fresh
                return
            } catch {
                lastError = error
            }
        }
        throw RedisError(.unavailable, "no cluster node answered CLUSTER SLOTS: \(lastError.map { "\($0)" } ?? "no node")")
    }

    private func connection(to node: RedisClusterSlots.Node) -> RedisConnection {
        if let existing = connections[node] { return existing }
        var configuration = template
        configuration.host = node.host
        configuration.port = node.port
        configuration.sentinel = nil
        let connection = RedisConnection(configuration: configuration, eventLoop: eventLoop, logger: logger, scripts: scripts)
        connections[node] = connection
        return connection
    }

    public func close() async {
        for connection in connections.values { await connection.close() }
        connections = [:]
    }
}
