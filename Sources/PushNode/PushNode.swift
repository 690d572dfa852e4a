import FleetCore
import FleetHTTP
import FleetRedis
import Hummingbird
import Logging
import MQTTCodec
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import RedisClient
import ServiceLifecycle

/// A push node: the MQTT listener, the node channel subscriber and the liveness heartbeat,
/// run as one `Service`.
///
/// On graceful shutdown it stops accepting, closes its connections (MQTT 5 terminals get
/// DISCONNECT 0x8B), removes their routes and its liveness key. Stored messages stay in Redis.
public final class PushNode: Service, Sendable {
    public let configuration: PushNodeConfiguration
    let context: PushNodeContext
    private let subscriber: RedisSubscriber
    private let group: any EventLoopGroup
    private let boundPort = NIOLockedValueBox<Int?>(nil)
    private let boundListenerPorts = NIOLockedValueBox<[Int]>([])

    public init(configuration: PushNodeConfiguration, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        var logger = logger
        logger[metadataKey: "node"] = "\(configuration.nodeID)"
        self.configuration = configuration
        self.group = group
        let redis = RedisConnection(configuration: configuration.redis, eventLoop: group.next(), logger: logger, scripts: FleetScripts.all)
        let (index, local, registry, metrics) = (SubscriptionIndex(), LocalSubscriptions(), SessionRegistry(), PushNodeMetrics())
        let router = TopicRouter(
            redis: redis, keys: configuration.keys, index: index, queueCap: configuration.offlineQueueCap,
            storedLifetime: configuration.maximumSessionExpiry, localNode: configuration.nodeID,
            retainedLimits: TopicRouter.RetainedLimits(
                messages: configuration.maximumRetainedMessages, bytes: configuration.maximumRetainedBytes),
            deliverLocally: { message, target in
                PushNodeContext.deliver(message, target: target, local: local, registry: registry, metrics: metrics)
            }
        )
        self.context = PushNodeContext(
            configuration: configuration,
            redis: redis,
            registry: registry,
            credentials: CredentialAuthority(secret: configuration.secret),
            logger: logger,
            metrics: metrics,
            connectLimiter: ConnectRateLimiter(rate: configuration.maximumConnectRate),
            index: index,
            local: local,
            acl: TopicACL(
                subscribe: configuration.publicTopicFilters, publish: configuration.publishTopicFilters, open: configuration.allowAnonymous),
            router: router
        )
        self.subscriber = RedisSubscriber(configuration: configuration.redis, eventLoop: group.next(), logger: logger, commands: redis)
    }

    /// The MQTT port actually bound (useful with port 0), once running.
    public var mqttPort: Int? { boundPort.withLockedValue { $0 } }

    /// The ports bound for `configuration.listeners`, in order, once running.
    public var listenerPorts: [Int] { boundListenerPorts.withLockedValue { $0 } }

    private func makeTLSContext() throws -> NIOSSLContext? {
        guard configuration.listeners.contains(where: \.transport.usesTLS) else { return nil }
        guard let certificate = configuration.tlsCertificatePath, let key = configuration.tlsKeyPath else {
            throw PushNodeError("a TLS listener needs --tls-cert and --tls-key")
        }
        let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
        let privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
        let tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(privateKey))
        return try NIOSSLContext(configuration: tls)
    }

    /// Number of MQTT sessions this node holds.
    public var sessionCount: Int { context.registry.count }

    /// Whether Redis (commands and subscriber) is reachable.
    public func isReady() async -> Bool {
        let commands = await context.redis.isConnected
        let subscriber = await subscriber.isConnected
        return commands && subscriber
    }

    public func run() async throws {
        let keys = configuration.keys
        let context = self.context
        // After Redis comes back: write the routes back if it lost them, and have every session
        // re-read its list, since wake events published while the subscriber was away are gone.
        let redisConnected = Gauge(label: "pushfleet_redis_connected")
        redisConnected.record(0)
        context.redis.onStateChange { connected in
            redisConnected.record(connected ? 1 : 0)
            guard connected else { return }
            // This node's index set is exactly its sessions' filters (empty after a restart).
            context.redis.fireAndForget([
                FleetScripts.indexUpdate.command(
                    keys: [keys.index(context.nodeID)], arguments: [keys.indexChannel, context.nodeID, "="] + context.local.filters)
            ])
            let sessions = context.registry.all
            guard !sessions.isEmpty else { return }
            context.logger.info("redis connected: re-asserting routes", metadata: ["sessions": "\(sessions.count)"])
            context.redis.fireAndForget(
                sessions.map {
                    FleetScripts.reassertRoute.command(
                        keys: [keys.route($0.terminal)],
                        arguments: [context.nodeID, $0.epoch, String($0.connectedAt)]
                    )
                }
            )
        }
        context.redis.start()
        subscriber.subscribe([keys.nodeChannel(configuration.nodeID)], sharded: true)
        subscriber.subscribe([keys.broadcastChannel, keys.indexChannel])
        subscriber.start()

        let servers: [any Channel]
        do {
            servers = try await bindListeners(tls: try makeTLSContext())
        } catch {
            // A start-up failure (TLS files, a busy port) leaves nothing open behind it.
            await subscriber.close()
            await context.redis.close()
            throw error
        }
        let port = servers[0].localAddress?.port
        boundPort.withLockedValue { $0 = port }
        boundListenerPorts.withLockedValue { $0 = servers.dropFirst().map { $0.localAddress?.port ?? 0 } }

        await withDiscardingTaskGroup { group in
            group.addTask { await self.consumeEvents() }
            group.addTask { await self.heartbeat() }
            group.addTask { await DelayedWills(context: context).sweep() }
            try? await gracefulShutdown()
            context.logger.info("push node shutting down")
            for server in servers { try? await server.close() }
            await self.drainSessions()
            context.status.flush()
            context.sent.flush()
            // After the routes' compare-and-delete scripts (same connection, in order).
            _ = try? await context.redis.pipeline([
                RedisCommand("DEL", keys.node(configuration.nodeID)),
                RedisCommand("SREM", keys.nodes, configuration.nodeID),
            ])
            group.cancelAll()
        }
        await subscriber.close()
        await context.redis.close()
    }

    /// Binds the MQTT listeners; if one fails, closes those already bound and throws.
    private func bindListeners(tls: NIOSSLContext?) async throws -> [any Channel] {
        let context = self.context
        var servers: [any Channel] = []
        let tcp = MQTTListener(.tcp, host: configuration.mqttHost, port: configuration.mqttPort)
        for listener in [tcp] + configuration.listeners {
            let transport = listener.transport
            let bound = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 4096)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                // Terminals send little: start small, grow when a connection reads more.
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 128, maximum: 65536))
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        guard context.connectionSlots.take() else {
                            context.metrics.connectsRefused.increment()
                            return try channel.configureBusyRefusal(transport: transport, tls: tls, node: context)
                        }
                        channel.closeFuture.whenComplete { _ in context.connectionSlots.release() }
                        try channel.configureMQTTPipeline(transport: transport, tls: tls, node: context)
                    }
                }
                .bind(host: listener.host, port: listener.port)
            let server: any Channel
            do {
                server = try await bound.get()
            } catch {
                for server in servers { try? await server.close() }
                throw error
            }
            servers.append(server)
            context.logger.info(
                "push node listening", metadata: ["listener": "\(transport.rawValue)://\(listener.host):\(server.localAddress?.port ?? 0)"])
        }
        return servers
    }

    /// Closes up to `count` sessions at `drainRate` per second with DISCONNECT 0x9C "use another
    /// server" (MQTT 5), each after its in-flight messages are acknowledged: after push nodes
    /// were added, shedding from the busy ones lets the load balancer spread the terminals.
    /// Returns the number of sessions asked to leave.
    public func shed(count: Int) async -> Int {
        let sessions = context.registry.all.prefix(max(0, count))
        let timeout = TimeAmount.seconds(Int64(configuration.drainTimeout))
        let batch = max(1, configuration.drainRate / 10)
        context.logger.info("shedding sessions", metadata: ["sessions": "\(sessions.count)"])
        var index = sessions.startIndex
        while index < sessions.endIndex {
            for handle in sessions[index..<min(index + batch, sessions.endIndex)] {
                handle.execute { $0.drain(timeout: timeout, reason: .useAnotherServer) }
            }
            index += batch
            if index < sessions.endIndex { try? await Task.sleep(for: .milliseconds(100)) }
        }
        return sessions.count
    }

    /// Closes every session at `drainRate` per second and waits (bounded) until all are gone.
    private func drainSessions() async {
        let sessions = context.registry.all
        let timeout = TimeAmount.seconds(Int64(configuration.drainTimeout))
        let batch = max(1, configuration.drainRate / 10)
        context.logger.info("draining sessions", metadata: ["sessions": "\(sessions.count)", "rate": "\(configuration.drainRate)"])
        var index = 0
        while index < sessions.count {
            for handle in sessions[index..<min(index + batch, sessions.count)] { handle.execute { $0.drain(timeout: timeout) } }
            index += batch
            if index < sessions.count { try? await Task.sleep(for: .milliseconds(100)) }
        }
        let deadline = ContinuousClock.now + .seconds(configuration.drainTimeout + 1)
        while context.registry.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Reads every other owner's index set into the node's copy of the fleet index.
    private static func loadIndex(_ context: PushNodeContext) async {
        do {
            try await context.index.load(from: context.redis, keys: context.keys, excluding: context.nodeID)
            context.logger.debug("fleet index loaded", metadata: ["owners": "\(context.index.summary)"])
        } catch {
            context.logger.warning("reading the fleet index failed", metadata: ["error": "\(error)"])
        }
    }

    /// Dispatches node channel, broadcast channel and index channel events, in order.
    private func consumeEvents() async {
        let registry = context.registry
        let indexChannel = configuration.keys.indexChannel
        let nodeChannel = configuration.keys.nodeChannel(configuration.nodeID)
        for await event in subscriber.events {
            if Task.isCancelled { break }
            if subscriber.takeOverflow() > 0 {
                // Events were dropped: what they announced is read from Redis again.
                context.metrics.subscriberOverflows.increment()
                await Self.loadIndex(context)
                for handle in registry.all { handle.execute { $0.wake() } }
            }
            let message: RedisPubSubMessage
            switch event {
            case .subscribed(indexChannel):
                // Changes announced before this subscription (at start, or while the subscriber
                // was away) were not heard: read the index now, before the changes after it.
                await Self.loadIndex(context)
                continue
            case .subscribed(nodeChannel):
                // A wake published before Redis had this subscription reached nobody; every
                // session registered by then reads its list again. Sessions register from the
                // moment the listener is up, which can be before this confirmation.
                for handle in registry.all { handle.execute { $0.wake() } }
                continue
            case .subscribed:
                continue
            case .message(let received):
                message = received
            }
            if message.channel == indexChannel {
                guard let change = IndexChange.decode(Array(message.payload.readableBytesView)) else { continue }
                // This node's own entries come from its sessions, applied when they change.
                if change.owner != context.nodeID { context.index.apply(change) }
                continue
            }
            guard let event = NodeEvent.decode(Array(message.payload.readableBytesView)) else {
                context.logger.warning("unreadable node event", metadata: ["channel": "\(message.channel)"])
                continue
            }
            switch event.kind {
            case .wake:
                let terminals = event.terminals ?? []
                if let entries = event.entries, entries.count == terminals.count {
                    var byTerminal: [String: [String]] = [:]
                    for (terminal, entry) in zip(terminals, entries) { byTerminal[terminal, default: []].append(entry) }
                    var wakes: [(handle: SessionHandle, value: [String])] = []
                    wakes.reserveCapacity(byTerminal.count)
                    for ((terminal, new), handle) in zip(byTerminal, registry.handles(for: byTerminal.keys)) {
                        guard let handle else {
                            registry.missedWake(for: terminal)
                            continue
                        }
                        wakes.append((handle, new))
                    }
                    SessionHandle.execute(wakes) { handler, entries in handler.wake(entries: entries) }
                } else {
                    for terminal in terminals {
                        guard let handle = registry.handle(for: terminal) else {
                            registry.missedWake(for: terminal)
                            continue
                        }
                        handle.execute { $0.wake() }
                    }
                }
            case .kick:
                guard let terminal = event.terminals?.first else { continue }
                let epoch = event.epoch ?? ""
                let revoked = event.reason == "revoked"
                // A takeover waits for the answer: sent once the connection delivers no more,
                // on the Redis connection that carried what it sent, after it.
                let answer = event.from.flatMap { from in
                    event.successor.map { successor in
                        let stopped = NodeEvent(kind: .stopped, terminals: [terminal], epoch: successor)
                        return RedisCommand("SPUBLISH", configuration.keys.nodeChannel(from), stopped.encoded())
                    }
                }
                if let handle = registry.handle(for: terminal) {
                    let context = self.context
                    handle.execute { handler in
                        handler.kick(epoch: epoch, revoked: revoked)
                        if let answer { context.sendAfterWrites(answer) }
                    }
                } else if let answer {
                    context.sendAfterWrites(answer)
                }
            case .stopped:
                guard let terminal = event.terminals?.first, let successor = event.epoch else { continue }
                registry.handle(for: terminal)?.execute { $0.predecessorStopped(successor: successor) }
            case .publish:
                guard let published = event.message, let target = event.target else { continue }
                context.deliverLocally(published, target: target)
            case .deliver:
                guard let pushed = event.message else { continue }
                if let terminals = event.terminals {
                    for terminal in terminals {
                        if let handle = registry.handle(for: terminal) {
                            handle.execute { $0.deliverLive(pushed, tracked: true) }
                        } else {
                            // It left between the control node's route read and now: online-only means dropped.
                            context.status.record(pushed.id, terminal: terminal, .dropped)
                        }
                    }
                } else {
                    let payload = pushed.payloadBuffer()
                    for handle in registry.all {
                        handle.execute { $0.deliverLive(pushed, tracked: false, countReach: true, payload: payload) }
                    }
                }
            }
        }
    }

    /// Refreshes this node's liveness key until cancelled.
    private func heartbeat() async {
        let keys = configuration.keys
        let ttl = configuration.livenessTTL
        let interval = max(1, ttl / 3)
        let started = String(FleetClock.nowMillis())
        while !Task.isCancelled {
            let commands = [
                RedisCommand(
                    "HSET", keys.node(configuration.nodeID),
                    "mqtt", "\(configuration.mqttHost):\(mqttPort ?? configuration.mqttPort)",
                    "startedAt", started,
                    "connections", String(context.registry.count),
                    // Totals since start, for the fleet's figures (GET /v1/stats).
                    "delivered", String(context.metrics.delivered.value),
                    "acknowledged", String(context.metrics.acknowledged.value)
                ),
                RedisCommand("EXPIRE", keys.node(configuration.nodeID), String(ttl)),
                RedisCommand("SADD", keys.nodes, configuration.nodeID),
            ]
            let ledger = context.metrics.ledger.takeCommands(keys: keys)
            do {
                let replies = try await context.redis.pipeline(commands + ledger.commands + [RedisCommand("SMEMBERS", keys.nodes)])
                if replies.dropFirst(commands.count).prefix(ledger.commands.count).contains(where: \.isError) {
                    context.metrics.ledger.restore(ledger.taken)
                }
                // A node that died keeps its index set: drop it, so publishes stop going its way.
                let others = (replies.last?.array?.compactMap(\.string) ?? []).filter { $0 != configuration.nodeID }
                if !others.isEmpty {
                    context.redis.fireAndForget(
                        others.map {
                            FleetScripts.sweepNode.command(keys: [keys.node($0), keys.index($0)], arguments: [keys.indexChannel, $0])
                        })
                }
            } catch {
                context.metrics.ledger.restore(ledger.taken)
                context.logger.debug("heartbeat failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(interval))
        }
    }
}

extension PushNode {
    /// The admin HTTP application: `/healthz`, `/readyz`, `/metrics`.
    public func makeAdminApplication(host: String, port: Int, metrics: @escaping @Sendable () -> [UInt8], logger: Logger)
        -> some ApplicationProtocol
    {
        let router = Router()
        OperationalRoutes.add(to: router, ready: { [self] in await self.isReady() }, metrics: metrics)
        // Operators only: the admin port belongs on an internal network.
        router.post("/v1/shed") { [self] request, _ -> Response in
            guard let count = request.uri.queryParameters.get("count", as: Int.self), count > 0 else {
                return Response(
                    status: .badRequest, headers: [.contentType: "application/json"],
                    body: .init(
                        byteBuffer: ByteBuffer(string: #"{"error":{"code":"bad_request","message":"count must be a positive integer"}}"#)))
            }
            let shed = await self.shed(count: count)
            return Response(
                status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"shed":\#(shed)}"#))
            )
        }
        return Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .seconds(Int64(configuration.httpIdleTimeout)))),
            configuration: .init(address: .hostname(host, port: port), serverName: "pushfleet-node"),
            logger: logger)
    }
}

/// A push node configuration that cannot work.
public struct PushNodeError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
