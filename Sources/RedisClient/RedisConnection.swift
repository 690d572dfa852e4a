import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A Redis client that reconnects by itself: to one server, to the master Sentinel names, or to
/// the masters of a Redis Cluster.
///
/// SwiftNIO owns the sockets; hiredis only formats commands and parses replies. A pipeline of
/// N commands is one write and one flush per server, and requests from one event loop tick
/// share a flush. After a connection drops, the client reconnects with exponential backoff; on
/// every (re)connect it authenticates, selects the database and loads the registered scripts
/// before any queued command.
///
/// Whether `configuration` names a cluster node is asked of the server (`cluster_enabled:1` in
/// `INFO cluster`) on connect. A cluster is then served by a ``RedisClusterRouter``: each
/// command goes to the master of its keys' slot. Commands sent before the answer go to the
/// server named; a MOVED or ASK they get is followed once the answer is in (it is read before
/// theirs).
public final class RedisConnection: Sendable {
    private enum Mode {
        /// Not known yet: the seed's first connect will tell.
        case unknown
        /// One server (or the master Sentinel names): everything goes to `seed`.
        case server
        case cluster(RedisClusterRouter)
    }

    /// The event loop that owns this connection.
    public let eventLoop: any EventLoop
    public let configuration: RedisConfiguration
    private let logger: Logger
    private let scripts: [RedisScript]
    /// The server `configuration` names.
    private let seed: RedisServerConnection
    private let mode: NIOLockedValueBox<Mode>
    private let stateHooks = NIOLockedValueBox<[@Sendable (Bool) -> Void]>([])
    private let modeHooks = NIOLockedValueBox<[@Sendable (RedisConnection) -> Void]>([])

    /// - Parameter scripts: Lua scripts loaded with SCRIPT LOAD on every connect (to every
    ///   master of a cluster).
    public init(configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger, scripts: [RedisScript] = []) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.scripts = scripts
        // Through Sentinel there is no cluster to find.
        let detects = configuration.sentinel == nil && configuration.detectsCluster
        let mode = NIOLockedValueBox<Mode>(detects ? .unknown : .server)
        self.mode = mode
        let detected = NIOLockedValueBox(WeakReference())
        let report: @Sendable (Bool) -> Void = { isCluster in detected.withLockedValue { $0.connection }?.detected(cluster: isCluster) }
        seed = RedisServerConnection(
            configuration: configuration, eventLoop: eventLoop, logger: logger, scripts: scripts,
            onClusterInfo: detects ? report : nil)
        detected.withLockedValue { $0.connection = self }
        let stateHooks = self.stateHooks
        seed.onStateChange { connected in
            guard case .server = mode.withLockedValue({ $0 }) else { return }
            for hook in stateHooks.withLockedValue({ $0 }) { hook(connected) }
        }
    }

    /// The seed answered `INFO cluster` (on its event loop).
    private func detected(cluster: Bool) {
        let previous = mode.withLockedValue { $0 }
        switch (previous, cluster) {
        case (.unknown, false):
            if !configuration.seeds.isEmpty {
                logger.warning("more than one Redis address was given, but the server is not a cluster node: they are other servers")
            }
            mode.withLockedValue { $0 = .server }
            for hook in stateHooks.withLockedValue({ $0 }) { hook(true) }
        case (.unknown, true):
            let router = RedisClusterRouter(
                seeds: [RedisAddress(host: configuration.host, port: configuration.port)] + configuration.seeds,
                configuration: configuration,
                eventLoop: eventLoop, logger: logger, scripts: scripts)
            let stateHooks = self.stateHooks
            router.onStateChange { connected in
                for hook in stateHooks.withLockedValue({ $0 }) { hook(connected) }
            }
            mode.withLockedValue { $0 = .cluster(router) }
            logger.info("redis is a cluster: commands go to the master of each slot", metadata: ["redis.seed": "\(configuration.target)"])
            router.start()
            // The seed is done once the replies already on their way are in.
            seed.pipelineFuture([RedisCommand("PING")]).whenComplete { _ in
                Task { await self.seed.close() }
            }
        case (.server, true):
            logger.error("redis at \(configuration.target) became a cluster node; restart the node to use it as one")
        default:
            return
        }
        let hooks = modeHooks.withLockedValue { hooks in
            defer { hooks = [] }
            return hooks
        }
        for hook in hooks { hook(self) }
    }

    /// The seed's callback must not keep this connection alive.
    private struct WeakReference: @unchecked Sendable {
        weak var connection: RedisConnection?
    }

    /// The cluster router, once the server has said it is a cluster node.
    var router: RedisClusterRouter? {
        guard case .cluster(let router) = mode.withLockedValue({ $0 }) else { return nil }
        return router
    }

    /// Whether the server turned out to be a Redis Cluster node (false until it has answered).
    public var isCluster: Bool { router != nil }

    /// Tells `hook` once whether the server is a cluster node, when known (the subscriber
    /// follows its commands connection there).
    func onModeKnown(_ hook: @escaping @Sendable (RedisConnection) -> Void) {
        let known = mode.withLockedValue { mode -> Bool in
            if case .unknown = mode {
                modeHooks.withLockedValue { $0.append(hook) }
                return false
            }
            return true
        }
        if known { hook(self) }
    }

    /// The cluster's slot map as last read (empty unless in cluster mode).
    public var clusterSlots: RedisClusterSlots.Map {
        get async { await router?.currentMap ?? RedisClusterSlots.Map() }
    }

    /// Starts connecting; safe to call more than once.
    public func start() { seed.start() }

    /// Whether a connection is up right now (in a cluster: to every master, every slot served).
    public var isConnected: Bool {
        get async {
            if let router { return await router.isConnected }
            return await seed.isConnected
        }
    }

    /// Registers a callback told `true` on every connect and `false` on every disconnect (in a
    /// cluster: of any master's connection).
    public func onStateChange(_ hook: @escaping @Sendable (Bool) -> Void) {
        stateHooks.withLockedValue { $0.append(hook) }
    }

    /// Closes the connection for good; queued and pending commands fail.
    public func close() async {
        await seed.close()
        await router?.close()
    }

    /// Sends one command; an error reply is thrown as ``RedisError``.
    @discardableResult
    public func send(_ command: RedisCommand) async throws -> RedisReply {
        try await pipeline([command])[0].throwingError()
    }

    /// Sends one command built from strings.
    @discardableResult
    public func send(_ name: String, _ arguments: String...) async throws -> RedisReply {
        try await send(RedisCommand(name, arguments))
    }

    /// Sends commands in one write (per server) and returns their replies in order. Error
    /// replies are returned in place; transport failures throw. An EVALSHA answered with
    /// NOSCRIPT is re-run with EVAL. In a cluster, commands of one slot keep their order and
    /// commands of different slots do not; see ``RedisClusterRouter``.
    public func pipeline(_ commands: [RedisCommand]) async throws -> [RedisReply] {
        try await pipelineFuture(commands).get()
    }

    /// ``pipeline(_:)`` as an event-loop future, for callers already on an event loop.
    public func pipelineFuture(_ commands: [RedisCommand]) -> EventLoopFuture<[RedisReply]> {
        switch mode.withLockedValue({ $0 }) {
        case .server:
            return seed.pipelineFuture(commands)
        case .cluster(let router):
            return router.pipelineFuture(commands)
        case .unknown:
            return seed.pipelineFuture(commands).flatMap { replies in self.followingRedirects(commands, replies) }
        }
    }

    /// Writes commands without waiting for their replies; error replies are logged. No
    /// promise and no reply array per call on one server: a push node sends one of these per
    /// acknowledged message.
    public func fireAndForget(_ commands: [RedisCommand]) {
        switch mode.withLockedValue({ $0 }) {
        case .server:
            seed.fireAndForget(commands)
        case .cluster(let router):
            router.fireAndForget(commands)
        case .unknown:
            pipelineFuture(commands).whenComplete { result in self.logFailures(result) }
        }
    }

    /// Completes once everything sent before this call is done. On one server that is
    /// already so for whatever is sent after (one connection runs commands in order), and the
    /// future is complete at once; in a cluster it waits for every master's answers.
    public func barrier() -> EventLoopFuture<Void> {
        router?.barrier() ?? eventLoop.makeSucceededVoidFuture()
    }

    /// A command sent before the seed said it is a cluster node may have been answered with
    /// MOVED or ASK: the router follows it.
    private func followingRedirects(_ commands: [RedisCommand], _ replies: [RedisReply]) -> EventLoopFuture<[RedisReply]> {
        guard let router, replies.contains(where: { RedisClusterRouter.redirect($0) != nil }) else {
            return eventLoop.makeSucceededFuture(replies)
        }
        return router.followRedirects(commands, replies)
    }

    func logFailures(_ result: Result<[RedisReply], any Error>) {
        switch result {
        case .success(let replies):
            for case .error(let message) in replies {
                logger.warning("redis command failed", metadata: ["error": "\(message)"])
            }
        case .failure(let error):
            logger.warning("redis commands failed", metadata: ["error": "\(error)"])
        }
    }
}
