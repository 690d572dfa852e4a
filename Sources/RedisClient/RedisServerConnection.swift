import Logging
import NIOCore
import NIOPosix

/// A connection to one Redis server that reconnects by itself (``RedisConnection`` uses one,
/// or one per master of a cluster).
///
/// SwiftNIO owns the socket; hiredis only formats commands and parses replies. Every call
/// hops to the connection's event loop once: a pipeline of N commands is one write and one
/// flush, and its replies complete one promise; requests from one event loop tick share a
/// flush. All mutable state lives on `eventLoop`.
///
/// After the connection drops, the client reconnects with exponential backoff. On every
/// (re)connect it authenticates, selects the database, loads the registered scripts and runs
/// the `onConnect` hooks (a subscriber re-subscribes there) before any queued command.
final class RedisServerConnection: Sendable {
    private enum State {
        case idle
        case connecting
        case connected(any Channel)
        case waitingToReconnect
        case closed
    }

    /// Everything that changes, confined to `eventLoop` (checked by the box).
    private struct LoopState {
        var state: State = .idle
        var queued: [RedisRequest] = []
        var failures = 0
        var flushScheduled = false
        var connectHooks: [@Sendable (RedisServerConnection) -> [RedisCommand]] = []
        var stateHooks: [@Sendable (Bool) -> Void] = []
    }

    /// The event loop that owns this connection.
    let eventLoop: any EventLoop
    let configuration: RedisConfiguration
    private let logger: Logger
    private let scripts: [RedisScript]
    private let onPush: (@Sendable (RedisReply) -> Void)?
    /// Told on every connect whether the server is a Redis Cluster node (`cluster_enabled:1`).
    private let onClusterInfo: (@Sendable (Bool) -> Void)?
    private let loopState: NIOLoopBoundBox<LoopState>

    private var state: State {
        get { loopState.value.state }
        _modify { yield &loopState.value.state }
    }
    private var queued: [RedisRequest] {
        get { loopState.value.queued }
        _modify { yield &loopState.value.queued }
    }
    private var failures: Int {
        get { loopState.value.failures }
        _modify { yield &loopState.value.failures }
    }
    private var flushScheduled: Bool {
        get { loopState.value.flushScheduled }
        _modify { yield &loopState.value.flushScheduled }
    }
    private var connectHooks: [@Sendable (RedisServerConnection) -> [RedisCommand]] {
        get { loopState.value.connectHooks }
        _modify { yield &loopState.value.connectHooks }
    }
    private var stateHooks: [@Sendable (Bool) -> Void] {
        get { loopState.value.stateHooks }
        _modify { yield &loopState.value.stateHooks }
    }

    /// - Parameters:
    ///   - scripts: Lua scripts loaded with SCRIPT LOAD on every connect.
    ///   - onPush: set for a subscriber connection: every reply goes here instead of to a caller.
    init(
        configuration: RedisConfiguration,
        eventLoop: any EventLoop,
        logger: Logger,
        scripts: [RedisScript] = [],
        onPush: (@Sendable (RedisReply) -> Void)? = nil,
        onClusterInfo: (@Sendable (Bool) -> Void)? = nil
    ) {
        self.onClusterInfo = onClusterInfo
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.scripts = scripts
        self.onPush = onPush
        self.loopState = NIOLoopBoundBox.makeBoxSendingValue(LoopState(), eventLoop: eventLoop)
    }

    /// Starts connecting; safe to call more than once.
    func start() {
        eventLoop.execute {
            if case .idle = self.state { self.connect() }
        }
    }

    /// Whether a connection is up right now.
    var isConnected: Bool {
        get async {
            (try? await eventLoop.submit { () -> Bool in
                if case .connected = self.state { return true }
                return false
            }.get()) ?? false
        }
    }

    /// Registers commands written first on every (re)connect, before queued commands.
    func onConnect(_ hook: @escaping @Sendable (RedisServerConnection) -> [RedisCommand]) {
        eventLoop.execute {
            self.connectHooks.append(hook)
            if case .connected(let channel) = self.state {
                let commands = hook(self)
                if !commands.isEmpty { channel.writeAndFlush(RedisRequest(commands: commands, promise: nil), promise: nil) }
            }
        }
    }

    /// Registers a callback told `true` on every connect and `false` on every disconnect.
    func onStateChange(_ hook: @escaping @Sendable (Bool) -> Void) {
        eventLoop.execute { self.stateHooks.append(hook) }
    }

    /// Closes the connection for good; queued and pending commands fail.
    func close() async {
        let channel: (any Channel)? = try? await eventLoop.submit { () -> (any Channel)? in
            defer { self.state = .closed }
            self.failQueued(RedisError(.connectionClosed, "connection closed by the client"))
            if case .connected(let channel) = self.state { return channel }
            return nil
        }.get()
        try? await channel?.close()
    }

    /// Sends one command; an error reply is thrown as ``RedisError``.
    @discardableResult
    func send(_ command: RedisCommand) async throws -> RedisReply {
        try await pipeline([command])[0].throwingError()
    }

    /// Sends one command built from strings.
    @discardableResult
    func send(_ name: String, _ arguments: String...) async throws -> RedisReply {
        try await send(RedisCommand(name, arguments))
    }

    /// Sends commands in one write and returns their replies in order. Error replies are
    /// returned in place; transport failures throw. An EVALSHA answered with NOSCRIPT is
    /// re-run with EVAL.
    func pipeline(_ commands: [RedisCommand]) async throws -> [RedisReply] {
        try await pipelineFuture(commands).get()
    }

    /// ``pipeline(_:)`` as an event-loop future, for callers already on an event loop.
    func pipelineFuture(_ commands: [RedisCommand]) -> EventLoopFuture<[RedisReply]> {
        let promise = eventLoop.makePromise(of: [RedisReply].self)
        eventLoop.execute { self.submit(RedisRequest(commands: commands, promise: promise)) }
        return promise.futureResult.flatMap { replies in
            self.retryingNoScript(commands: commands, replies: replies)
        }
    }

    /// Writes commands without waiting for their replies; error replies are logged. No
    /// promise and no reply array per call: a push node sends one of these per acknowledged
    /// message.
    func fireAndForget(_ commands: [RedisCommand]) {
        eventLoop.execute { self.submit(RedisRequest(commands: commands, promise: nil)) }
    }

    /// Writes commands without waiting for their replies, only if connected right now: for
    /// commands an ``onConnect(_:)`` hook also sends, which must not go twice when the
    /// connection comes up after them.
    func fireAndForgetIfConnected(_ commands: [RedisCommand]) {
        eventLoop.execute {
            guard case .connected = self.state else { return }
            self.fireAndForget(commands)
        }
    }

    private func retryingNoScript(commands: [RedisCommand], replies: [RedisReply]) -> EventLoopFuture<[RedisReply]> {
        var retries: [(Int, RedisCommand)] = []
        for (index, reply) in replies.enumerated() {
            guard case .error(let message) = reply, message.hasPrefix("NOSCRIPT"),
                let script = scripts.first(where: { Array($0.sha1.utf8) == commands[index].arguments[1] })
            else { continue }
            retries.append((index, script.evalCommand(from: commands[index])))
        }
        guard !retries.isEmpty else { return eventLoop.makeSucceededFuture(replies) }
        let indices = retries.map(\.0)
        let promise = eventLoop.makePromise(of: [RedisReply].self)
        submit(RedisRequest(commands: retries.map(\.1), promise: promise))
        return promise.futureResult.map { retried in
            var result = replies
            for (index, reply) in zip(indices, retried) { result[index] = reply }
            return result
        }
    }

    private func submit(_ request: RedisRequest) {
        switch state {
        case .connected(let channel):
            // Requests submitted in one event loop tick leave in one flush (one syscall):
            // during a reconnect storm many sessions' registrations share a write.
            channel.write(request, promise: nil)
            if !flushScheduled {
                flushScheduled = true
                eventLoop.execute {
                    self.flushScheduled = false
                    if case .connected(let current) = self.state { current.flush() }
                }
            }
        case .idle, .connecting:
            if case .idle = state { connect() }
            guard queued.count < 100_000 else {
                request.promise?.fail(RedisError(.unavailable, "too many commands queued while connecting"))
                return
            }
            queued.append(request)
        case .waitingToReconnect:
            request.promise?.fail(RedisError(.unavailable, "not connected to redis at \(configuration.target)"))
        case .closed:
            request.promise?.fail(RedisError(.connectionClosed, "connection closed by the client"))
        }
    }

    private func connect() {
        state = .connecting
        guard let sentinel = configuration.sentinel else {
            // More than one cluster node given: each attempt after a failure tries the next.
            let addresses = [RedisAddress(host: configuration.host, port: configuration.port)] + configuration.seeds
            let address = addresses[failures % addresses.count]
            return connect(host: address.host, port: address.port)
        }
        resolveMaster(sentinel, from: 0, lastError: nil).whenComplete { result in
            guard case .connecting = self.state else { return }
            switch result {
            case .success(let master): self.connect(host: master.host, port: master.port)
            case .failure(let error): self.connectFailed(error)
            }
        }
    }

    /// Asks the Sentinels, from the `index`th on, where the master is; the first that knows
    /// answers.
    private func resolveMaster(
        _ sentinel: RedisConfiguration.Sentinel, from index: Int, lastError: (any Error)?
    ) -> EventLoopFuture<RedisConfiguration.Sentinel.Address> {
        guard index < sentinel.addresses.count else {
            return eventLoop.makeFailedFuture(
                RedisError(.unavailable, "no sentinel knows master \(sentinel.masterName)\(lastError.map { ": \($0)" } ?? "")"))
        }
        let address = sentinel.addresses[index]
        var commands: [RedisCommand] = []
        if let password = sentinel.password { commands.append(RedisCommand("AUTH", password)) }
        commands.append(RedisCommand("SENTINEL", "get-master-addr-by-name", sentinel.masterName))
        return oneShot(host: address.host, port: address.port, commands: commands).flatMapThrowing { replies in
            guard let pair = replies.last?.array, pair.count == 2, let host = pair[0].string, let port = pair[1].string.flatMap({ Int($0) })
            else { throw RedisError(.unexpectedReply, "sentinel \(address) answered \(replies.last.map { "\($0)" } ?? "nothing")") }
            return RedisConfiguration.Sentinel.Address(host: host, port: port)
        }.flatMapError { error in
            self.resolveMaster(sentinel, from: index + 1, lastError: error)
        }
    }

    /// Connects to `host:port`, sends `commands`, and closes once they are answered.
    private func oneShot(host: String, port: Int, commands: [RedisCommand]) -> EventLoopFuture<[RedisReply]> {
        Self.oneShot(host: host, port: port, commands: commands, configuration: configuration, eventLoop: eventLoop)
    }

    /// Connects to `host:port` with `configuration`'s timeouts, sends `commands`, and closes
    /// once they are answered (a Sentinel's or a cluster node's answer about where things are).
    static func oneShot(
        host: String, port: Int, commands: [RedisCommand], configuration: RedisConfiguration, eventLoop: any EventLoop
    ) -> EventLoopFuture<[RedisReply]> {
        bootstrap(configuration: configuration, eventLoop: eventLoop, onPush: nil, onDroppedError: nil)
            .connect(host: host, port: port)
            .flatMap { channel in
                let promise = channel.eventLoop.makePromise(of: [RedisReply].self)
                channel.writeAndFlush(RedisRequest(commands: commands, promise: promise), promise: nil)
                return promise.futureResult.always { _ in channel.close(promise: nil) }
            }
            .hop(to: eventLoop)
    }

    /// A client socket to a Redis server with the connection's timeouts and a reply handler.
    private static func bootstrap(
        configuration: RedisConfiguration, eventLoop: any EventLoop, onPush: (@Sendable (RedisReply) -> Void)?,
        onDroppedError: (@Sendable (String) -> Void)?
    ) -> ClientBootstrap {
        let timeout = configuration.commandTimeout
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        RedisChannelHandler(commandTimeout: timeout, onPush: onPush, onDroppedError: onDroppedError))
                }
            }
    }

    private func connect(host: String, port: Int) {
        let logger = self.logger
        Self.bootstrap(
            configuration: configuration, eventLoop: eventLoop, onPush: onPush,
            onDroppedError: { message in logger.warning("redis command failed", metadata: ["error": "\(message)"]) }
        )
        .connect(host: host, port: port)
        .hop(to: eventLoop)
        .whenComplete { result in
            switch result {
            case .success(let channel): self.connected(channel)
            case .failure(let error): self.connectFailed(error)
            }
        }
    }

    private func connected(_ channel: any Channel) {
        if case .closed = state {
            channel.close(promise: nil)
            return
        }
        if failures > 0 { logger.info("redis reconnected", metadata: ["redis.host": "\(configuration.target)"]) }
        failures = 0
        state = .connected(channel)
        channel.closeFuture.hop(to: eventLoop).whenComplete { _ in self.disconnected(channel) }
        var setup: [RedisCommand] = []
        if let password = configuration.password {
            setup.append(RedisCommand("AUTH", [configuration.username, password].compactMap { $0 }))
        }
        if configuration.database != 0 { setup.append(RedisCommand("SELECT", String(configuration.database))) }
        // Through Sentinel: the server named as master may have been demoted since.
        let checksRole = configuration.sentinel != nil && onPush == nil
        if checksRole { setup.append(RedisCommand("ROLE")) }
        if onPush == nil {
            for script in scripts { setup.append(RedisCommand("SCRIPT", "LOAD", script.source)) }
        }
        let onClusterInfo = onPush == nil ? self.onClusterInfo : nil
        if onClusterInfo != nil { setup.append(RedisCommand("INFO", "cluster")) }
        for hook in connectHooks { setup += hook(self) }
        if !setup.isEmpty {
            let promise: EventLoopPromise<[RedisReply]>? = onPush == nil ? eventLoop.makePromise() : nil
            let roleIndex = setup.firstIndex { $0.name == "ROLE" }
            let infoIndex = setup.firstIndex { $0.name == "INFO" }
            promise?.futureResult.whenSuccess { replies in
                // Told before any queued command's reply is read: they were written after.
                if let onClusterInfo, let infoIndex {
                    onClusterInfo(replies[infoIndex].string?.contains("cluster_enabled:1") ?? false)
                }
                for case .error(let message) in replies {
                    self.logger.error("redis connection setup failed", metadata: ["error": "\(message)"])
                }
                if checksRole, let roleIndex, replies[roleIndex].array?.first?.string != "master" {
                    self.logger.warning("the server sentinel named is not a master (a failover under way): reconnecting")
                    channel.close(promise: nil)
                }
            }
            channel.write(RedisRequest(commands: setup, promise: promise), promise: nil)
        }
        let waiting = queued
        queued = []
        for request in waiting { channel.write(request, promise: nil) }
        channel.flush()
        for hook in stateHooks { hook(true) }
    }

    private func connectFailed(_ error: any Error) {
        if case .closed = state { return }
        failQueued(RedisError(.unavailable, "cannot connect to redis at \(configuration.target): \(error)"))
        scheduleReconnect(reason: "\(error)")
    }

    private func disconnected(_ channel: any Channel) {
        guard case .connected(let current) = state, current === channel else { return }
        for hook in stateHooks { hook(false) }
        scheduleReconnect(reason: "connection closed")
    }

    private func scheduleReconnect(reason: String) {
        failures += 1
        state = .waitingToReconnect
        let exponent = min(failures - 1, 16)
        let delay = min(configuration.minimumBackoff.nanoseconds << exponent, configuration.maximumBackoff.nanoseconds)
        if failures == 1 || failures % 20 == 0 {
            logger.warning(
                "redis unavailable, reconnecting",
                metadata: ["redis.host": "\(configuration.target)", "reason": "\(reason)", "attempt": "\(failures)"]
            )
        }
        eventLoop.scheduleTask(in: .nanoseconds(delay)) {
            if case .waitingToReconnect = self.state { self.connect() }
        }
    }

    private func failQueued(_ error: RedisError) {
        let waiting = queued
        queued = []
        for request in waiting { request.promise?.fail(error) }
    }
}
