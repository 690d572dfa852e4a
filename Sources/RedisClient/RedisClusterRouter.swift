import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Sends each command of a pipeline to the master serving its slot, over one
/// ``RedisServerConnection`` per master (one write each), and puts the replies back in order.
///
/// - The slot map comes from `CLUSTER SLOTS`, asked of the masters already connected, then of
///   the seeds. It is read again every ``refreshInterval``, at once when a MOVED answer says a
///   slot moved, and every ``checkInterval`` while a master's connection is down (its replica
///   is being promoted).
/// - MOVED: the command goes to the node named. ASK (a slot being migrated): that one command
///   goes to the node named, after ASKING. TRYAGAIN (a multi-key command halfway through a
///   migration): sent again after ``tryAgainDelay``.
/// - MGET, DEL, EXISTS, UNLINK and TOUCH whose keys span slots are split per slot and their
///   replies merged; any other command whose keys span slots is answered CROSSSLOT without
///   being sent. `WAIT` goes to every master and answers the fewest replicas any of them
///   reached.
/// - Commands to one slot keep their order (one connection per master). Commands to
///   different slots do not: a caller that needs one after another waits for the first's reply.
///
/// All state is confined to `eventLoop`.
final class RedisClusterRouter: Sendable {
    private struct LoopState {
        var map = RedisClusterSlots.Map()
        var connections: [RedisAddress: RedisServerConnection] = [:]
        var connected: Set<RedisAddress> = []
        var refreshing: EventLoopFuture<Void>?
        var lastRefresh = NIODeadline.distantPast
        var ticker: RepeatedTask?
        var closed = false
    }

    let eventLoop: any EventLoop
    private let seeds: [RedisAddress]
    private let template: RedisConfiguration
    private let logger: Logger
    private let scripts: [RedisScript]
    private let loopState: NIOLoopBoundBox<LoopState>
    private let stateHooks = NIOLockedValueBox<[@Sendable (Bool) -> Void]>([])
    private let mapHooks = NIOLockedValueBox<[@Sendable (RedisClusterSlots.Map) -> Void]>([])

    /// Redirects one command may follow before it fails.
    static let maximumRedirects = 5
    static let refreshInterval: TimeAmount = .seconds(5)
    static let checkInterval: TimeAmount = .milliseconds(500)
    static let tryAgainDelay: TimeAmount = .milliseconds(50)

    /// - Parameters:
    ///   - seeds: nodes of the cluster; one that answers is enough.
    ///   - configuration: password, database and timeouts for every node (its host and port
    ///     are not used).
    init(seeds: [RedisAddress], configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger, scripts: [RedisScript]) {
        self.seeds = seeds
        var template = configuration
        template.sentinel = nil
        // A master's connection goes to that master only.
        template.seeds = []
        self.template = template
        self.eventLoop = eventLoop
        self.logger = logger
        self.scripts = scripts
        self.loopState = NIOLoopBoundBox.makeBoxSendingValue(LoopState(), eventLoop: eventLoop)
    }

    private var state: LoopState {
        get { loopState.value }
        _modify { yield &loopState.value }
    }

    /// Reads the map, connects to every master, and keeps the map current.
    func start() {
        eventLoop.execute {
            _ = self.refresh()
            self.state.ticker = self.eventLoop.scheduleRepeatedTask(initialDelay: Self.checkInterval, delay: Self.checkInterval) { _ in
                self.tick()
            }
        }
    }

    /// Registers a callback told `true` when a master's connection comes up and `false` when
    /// one goes down.
    func onStateChange(_ hook: @escaping @Sendable (Bool) -> Void) {
        stateHooks.withLockedValue { $0.append(hook) }
    }

    /// Registers a callback told every new slot map (on `eventLoop`).
    func onMapChange(_ hook: @escaping @Sendable (RedisClusterSlots.Map) -> Void) {
        mapHooks.withLockedValue { $0.append(hook) }
    }

    /// Reads the slot map again now (shared with a read under way) and answers it.
    func refreshedMap() -> EventLoopFuture<RedisClusterSlots.Map> {
        eventLoop.flatSubmit { self.refresh().map { self.state.map } }
    }

    /// The slot map as last read.
    func mapFuture() -> EventLoopFuture<RedisClusterSlots.Map> {
        eventLoop.submit { self.state.map }
    }

    var currentMap: RedisClusterSlots.Map {
        get async { (try? await eventLoop.submit { self.state.map }.get()) ?? RedisClusterSlots.Map() }
    }

    /// Every slot served and every master's connection up.
    var isConnected: Bool {
        get async {
            (try? await eventLoop.submit {
                self.state.map.coversEverySlot && self.state.map.nodes.allSatisfy(self.state.connected.contains)
            }.get()) ?? false
        }
    }

    func close() async {
        let connections = try? await eventLoop.submit { () -> [RedisServerConnection] in
            self.state.closed = true
            self.state.ticker?.cancel()
            defer { self.state.connections = [:] }
            return Array(self.state.connections.values)
        }.get()
        for connection in connections ?? [] { await connection.close() }
    }

    // MARK: Commands

    func pipelineFuture(_ commands: [RedisCommand]) -> EventLoopFuture<[RedisReply]> {
        eventLoop.flatSubmit { self.run(commands) }
    }

    func fireAndForget(_ commands: [RedisCommand]) {
        pipelineFuture(commands).whenComplete { result in
            switch result {
            case .success(let replies):
                for case .error(let message) in replies {
                    self.logger.warning("redis command failed", metadata: ["error": "\(message)"])
                }
            case .failure(let error):
                self.logger.warning("redis commands failed", metadata: ["error": "\(error)"])
            }
        }
    }

    private func run(_ commands: [RedisCommand]) -> EventLoopFuture<[RedisReply]> {
        guard !state.closed else { return eventLoop.makeFailedFuture(RedisError(.connectionClosed, "connection closed by the client")) }
        guard !state.map.nodes.isEmpty else { return refresh().flatMap { self.run(commands) } }
        if let node = oneMaster(for: commands) {
            // Most pipelines of a node (one terminal's writes, one session's reads) are for one
            // slot: sent as they are, with no grouping, and nothing to follow unless redirected.
            return connection(to: node).pipelineFuture(commands)
                .flatMapError { error in
                    _ = self.refresh()
                    return self.eventLoop.makeFailedFuture(error)
                }
                .flatMap { replies in
                    guard replies.contains(where: { Self.redirect($0) != nil || Self.mustRetry($0) }) else {
                        return self.eventLoop.makeSucceededFuture(replies)
                    }
                    return self.following(commands.map { [Part(command: $0, slot: nil)] }, replies.map { [$0] }).map { $0.map { $0[0] } }
                }
        }
        var merges: [Merge] = []
        var parts: [[Part]] = []
        merges.reserveCapacity(commands.count)
        parts.reserveCapacity(commands.count)
        var replies = [[RedisReply]](repeating: [], count: commands.count)
        // Per master (by its place in the map), the parts it gets, in order, and which command
        // and part each is.
        let masters = state.map.nodes
        var batches = [(commands: [RedisCommand], targets: [(command: Int, part: Int)])](repeating: ([], []), count: masters.count)
        for (index, command) in commands.enumerated() {
            guard let (merge, commandParts) = Self.plan(command) else {
                merges.append(.single)
                parts.append([])
                replies[index] = [.error("CROSSSLOT Keys in request don't hash to the same slot (\(command.name))")]
                continue
            }
            merges.append(merge)
            parts.append(commandParts)
            replies[index] = Array(repeating: .null, count: commandParts.count)
            for (partIndex, part) in commandParts.enumerated() {
                if part.allMasters {
                    // One reply per master: the part becomes as many parts, merged by `merge`.
                    replies[index] = Array(repeating: .null, count: masters.count)
                    parts[index] = Array(repeating: part, count: masters.count)
                    for master in masters.indices {
                        batches[master].commands.append(part.command)
                        batches[master].targets.append((index, master))
                    }
                    continue
                }
                guard let master = part.slot.map(state.map.nodeIndex(for:)) ?? 0 else {
                    replies[index][partIndex] = .error("CLUSTERDOWN Hash slot not served")
                    continue
                }
                batches[master].commands.append(part.command)
                batches[master].targets.append((index, partIndex))
            }
        }
        let sent = zip(masters, batches).filter { !$0.1.commands.isEmpty }.map { node, batch in
            connection(to: node).pipelineFuture(batch.commands).map { (batch.targets, $0) }
        }
        let (planned, merging, unanswered) = (parts, merges, replies)
        return EventLoopFuture.whenAllSucceed(sent, on: eventLoop)
            .flatMapError { error in
                // A master unreachable: perhaps failed over. Read the map again.
                _ = self.refresh()
                return self.eventLoop.makeFailedFuture(error)
            }
            .flatMap { answered in
                var replies = unanswered
                for (targets, got) in answered {
                    for (target, reply) in zip(targets, got) { replies[target.command][target.part] = reply }
                }
                return self.following(planned, replies).map { replies in
                    zip(merging, replies).map { Self.merged($0, $1) }
                }
            }
    }

    /// The master every command of `commands` goes to, when they are all for one master and
    /// each has one key (or keys in one slot); nil otherwise.
    private func oneMaster(for commands: [RedisCommand]) -> RedisAddress? {
        var master: RedisAddress?
        for command in commands {
            let slot: Int
            switch command.keyPositions {
            case .one(let index):
                slot = RedisClusterSlots.slot(of: command.argument(index))
            case .several(let indices):
                let first = RedisClusterSlots.slot(of: command.argument(indices[0]))
                guard indices.dropFirst().allSatisfy({ RedisClusterSlots.slot(of: command.argument($0)) == first }) else { return nil }
                slot = first
            case .none:
                return nil
            }
            guard let node = state.map.node(for: slot), master == nil || master == node else { return nil }
            master = node
        }
        return master
    }

    /// Completes once every master has answered everything sent to it before this call:
    /// what was sent before is done, on whichever masters it went to.
    func barrier() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit {
            let pings = self.state.connections.values.map { $0.pipelineFuture([RedisCommand("PING")]) }
            return EventLoopFuture.whenAllComplete(pings, on: self.eventLoop).map { _ in }
        }
    }

    // MARK: Redirects

    /// MOVED or ASK, and where to (an empty host: the same host as the node that answered,
    /// which the caller fills in).
    static func redirect(_ reply: RedisReply) -> (ask: Bool, node: RedisAddress)? {
        guard case .error(let message) = reply, message.hasPrefix("MOVED ") || message.hasPrefix("ASK ") else { return nil }
        let parts = message.split(separator: " ")
        guard parts.count == 3, let colon = parts[2].lastIndex(of: ":"), let port = Int(parts[2][parts[2].index(after: colon)...]) else {
            return nil
        }
        return (parts[0] == "ASK", RedisAddress(host: String(parts[2][..<colon]), port: port))
    }

    private static func mustRetry(_ reply: RedisReply) -> Bool {
        if case .error(let message) = reply { return message.hasPrefix("TRYAGAIN") }
        return false
    }

    /// The replies of commands sent to one server before it was known to be a cluster node,
    /// with every MOVED and ASK among them followed.
    func followRedirects(_ commands: [RedisCommand], _ replies: [RedisReply]) -> EventLoopFuture<[RedisReply]> {
        eventLoop.flatSubmit {
            self.following(commands.map { [Part(command: $0, slot: nil)] }, replies.map { [$0] }).map { $0.map { $0[0] } }
        }
    }

    /// Follows, one after another in order, every redirected or TRYAGAIN part.
    private func following(_ parts: [[Part]], _ replies: [[RedisReply]]) -> EventLoopFuture<[[RedisReply]]> {
        var pending: [(command: Int, part: Int)] = []
        for (index, commandReplies) in replies.enumerated() {
            for (partIndex, reply) in commandReplies.enumerated() where Self.redirect(reply) != nil || Self.mustRetry(reply) {
                pending.append((index, partIndex))
            }
        }
        guard !pending.isEmpty else { return eventLoop.makeSucceededFuture(replies) }
        var result = eventLoop.makeSucceededFuture(replies)
        for target in pending {
            result = result.flatMap { replies in
                self.follow(parts[target.command][target.part].command, from: replies[target.command][target.part], attempt: 0).map {
                    var replies = replies
                    replies[target.command][target.part] = $0
                    return replies
                }
            }
        }
        return result
    }

    private func follow(_ command: RedisCommand, from reply: RedisReply, attempt: Int) -> EventLoopFuture<RedisReply> {
        if Self.mustRetry(reply) {
            guard attempt < Self.maximumRedirects * 4 else { return eventLoop.makeSucceededFuture(reply) }
            return eventLoop.scheduleTask(in: Self.tryAgainDelay) {}.futureResult.flatMap {
                guard let slot = (try? command.slot()) ?? nil, let node = self.state.map.node(for: slot) else {
                    return self.eventLoop.makeSucceededFuture(reply)
                }
                return self.connection(to: node).pipelineFuture([command]).flatMap {
                    self.follow(command, from: $0[0], attempt: attempt + 1)
                }
            }
        }
        guard let (ask, named) = Self.redirect(reply) else { return eventLoop.makeSucceededFuture(reply) }
        var node = named
        if node.host.isEmpty { node.host = state.map.nodes.first?.host ?? seeds.first?.host ?? "127.0.0.1" }
        guard attempt < Self.maximumRedirects else {
            return eventLoop.makeFailedFuture(
                RedisError(.tooManyRedirects, "\(command.name) redirected \(Self.maximumRedirects) times, last: \(reply)"))
        }
        if ask {
            return connection(to: node).pipelineFuture([RedisCommand("ASKING"), command]).flatMap {
                self.follow(command, from: $0[1], attempt: attempt + 1)
            }
        }
        // The slot moved; a migration moves many, so the whole map is read again.
        _ = refresh()
        return connection(to: node).pipelineFuture([command]).flatMap { self.follow(command, from: $0[0], attempt: attempt + 1) }
    }

    // MARK: The slot map

    private func tick() {
        guard !state.closed else { return }
        let masterDown = state.map.nodes.contains { !state.connected.contains($0) }
        if masterDown || !state.map.coversEverySlot || state.lastRefresh + Self.refreshInterval <= .now() {
            _ = refresh()
        }
    }

    /// Reads the map from the first node that answers: the masters connected, then the seeds.
    /// Calls made while a read is under way share it.
    private func refresh() -> EventLoopFuture<Void> {
        if let refreshing = state.refreshing { return refreshing }
        let connected = state.map.nodes.filter { state.connected.contains($0) }
        let askable = connected.map { ($0, true) } + seeds.filter { !connected.contains($0) }.map { ($0, false) }
        let future = ask(askable, from: 0, lastError: nil).map { map in self.apply(map) }
        state.refreshing = future
        future.whenComplete { _ in
            self.state.refreshing = nil
            self.state.lastRefresh = .now()
        }
        return future
    }

    private func ask(_ nodes: [(RedisAddress, Bool)], from index: Int, lastError: (any Error)?) -> EventLoopFuture<RedisClusterSlots.Map> {
        guard index < nodes.count else {
            return eventLoop.makeFailedFuture(
                RedisError(.unavailable, "no redis cluster node answered CLUSTER SLOTS: \(lastError.map { "\($0)" } ?? "no node known")"))
        }
        let (node, isConnected) = nodes[index]
        let slots = RedisCommand("CLUSTER", "SLOTS")
        let asked: EventLoopFuture<[RedisReply]>
        if isConnected, let connection = state.connections[node] {
            asked = connection.pipelineFuture([slots])
        } else {
            var commands: [RedisCommand] = []
            if let password = template.password { commands.append(RedisCommand("AUTH", [template.username, password].compactMap { $0 })) }
            commands.append(slots)
            asked = RedisServerConnection.oneShot(
                host: node.host, port: node.port, commands: commands, configuration: template, eventLoop: eventLoop)
        }
        return asked.flatMapThrowing { replies in
            let reply = replies[replies.count - 1]
            if case .error(let message) = reply { throw RedisError(.server, message) }
            let map = try RedisClusterSlots.Map(clusterSlots: reply, askedHost: node.host)
            guard !map.nodes.isEmpty else { throw RedisError(.unexpectedReply, "CLUSTER SLOTS named no node") }
            return map
        }.flatMapError { error in
            self.ask(nodes, from: index + 1, lastError: error)
        }
    }

    private func apply(_ map: RedisClusterSlots.Map) {
        guard !state.closed else { return }
        for node in map.nodes { _ = connection(to: node) }
        guard map != state.map else { return }
        logger.info(
            "redis cluster slot map read",
            metadata: ["masters": "\(map.nodes.map(\.description).joined(separator: ","))", "complete": "\(map.coversEverySlot)"])
        state.map = map
        // Connections to servers that are no longer masters close once their replies are in.
        for (node, connection) in state.connections where !map.nodes.contains(node) {
            state.connections[node] = nil
            state.connected.remove(node)
            connection.pipelineFuture([RedisCommand("PING")]).whenComplete { _ in Task { await connection.close() } }
        }
        for hook in mapHooks.withLockedValue({ $0 }) { hook(map) }
    }

    private func connection(to node: RedisAddress) -> RedisServerConnection {
        if let existing = state.connections[node] { return existing }
        var configuration = template
        configuration.host = node.host
        configuration.port = node.port
        let connection = RedisServerConnection(configuration: configuration, eventLoop: eventLoop, logger: logger, scripts: scripts)
        state.connections[node] = connection
        let stateHooks = self.stateHooks
        connection.onStateChange { connected in
            // Hooks run on the connection's event loop, which is this one.
            guard self.state.connections[node] === connection else { return }
            if connected {
                self.state.connected.insert(node)
            } else {
                self.state.connected.remove(node)
                _ = self.refresh()
            }
            for hook in stateHooks.withLockedValue({ $0 }) { hook(connected) }
        }
        connection.start()
        return connection
    }
}
