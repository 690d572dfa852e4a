import AsyncHTTPClient
import FleetCore
import FleetHTTP
import FleetRedis
import Hummingbird
import Logging
import Metrics
import NIOCore
import NIOPosix
import RedisClient
import ServiceLifecycle

/// A control node: the HTTP API and the command stream consumer, as one `Service`.
public struct ControlNode: Service {
    public let configuration: ControlNodeConfiguration
    private let redis: RedisConnection
    private let streamRedis: RedisConnection
    /// The status webhook posters' own connections (each one's XREADGROUP BLOCK holds it),
    /// when configured.
    private let webhookRedis: [RedisConnection]
    private let group: any EventLoopGroup
    private let dispatcher: PushDispatcher
    /// The fleet index, for topic pushes, kept current from the index channel.
    private let index = SubscriptionIndex()
    private let subscriber: RedisSubscriber
    private let logger: Logger
    private let metrics: @Sendable () -> [UInt8]

    public init(
        configuration: ControlNodeConfiguration,
        logger: Logger,
        metrics: @escaping @Sendable () -> [UInt8] = { [] },
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
        self.redis = RedisConnection(configuration: configuration.redis, eventLoop: group.next(), logger: logger, scripts: FleetScripts.all)
        var streamConfiguration = configuration.redis
        streamConfiguration.commandTimeout = .seconds(10)
        self.streamRedis = RedisConnection(
            configuration: streamConfiguration, eventLoop: group.next(), logger: logger, scripts: FleetScripts.all)
        self.webhookRedis = (0..<(configuration.statusWebhook?.concurrency ?? 0)).map { _ in
            RedisConnection(configuration: streamConfiguration, eventLoop: group.next(), logger: logger, scripts: FleetScripts.all)
        }
        self.group = group
        self.dispatcher = PushDispatcher(configuration: configuration, redis: redis, logger: logger, index: index)
        self.subscriber = RedisSubscriber(configuration: configuration.redis, eventLoop: group.next(), logger: logger, commands: redis)
    }

    /// Builds the HTTP application (also used by tests to serve on port 0).
    public func makeApplication(onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }) -> some ApplicationProtocol {
        let router = Router()
        router.add(middleware: APIMiddleware(access: APIAccess(keys: configuration.allAPIKeys)))
        let redis = self.redis
        OperationalRoutes.add(to: router, ready: { await redis.isConnected }, metrics: metrics)
        StaticDocuments.add(to: router)
        let api = ControlAPI(
            configuration: configuration,
            redis: redis,
            dispatcher: dispatcher,
            credentials: CredentialAuthority(secret: configuration.secret)
        )
        api.addRoutes(to: router)
        return Application(
            router: router,
            server: .http1(configuration: .init(idleTimeout: .seconds(Int64(configuration.httpIdleTimeout)))),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "pushfleet-control"),
            onServerRunning: onServerRunning,
            logger: logger
        )
    }

    public func run() async throws {
        let redisConnected = Gauge(label: "pushfleet_redis_connected")
        redisConnected.record(0)
        redis.onStateChange { connected in redisConnected.record(connected ? 1 : 0) }
        redis.start()
        let (index, redis, keys, logger) = (self.index, self.redis, configuration.keys, self.logger)
        subscriber.subscribe([keys.indexChannel])
        subscriber.start()
        let app = makeApplication()
        let consumer = CommandStreamConsumer(configuration: configuration, redis: streamRedis, dispatcher: dispatcher, logger: logger)
        let subscriber = self.subscriber
        // Whatever ends the node (a shutdown, or a start-up failure such as a busy port), its
        // Redis connections are closed.
        do {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    for await event in subscriber.events {
                        // Changes were dropped (this node fell behind), or announced before Redis
                        // had the subscription (at start, or while the subscriber was away): either
                        // way not heard, so the index is read again.
                        var reload = subscriber.takeOverflow() > 0
                        switch event {
                        case .message(let message):
                            if !reload, let change = IndexChange.decode(Array(message.payload.readableBytesView)) { index.apply(change) }
                        case .subscribed:
                            reload = true
                        }
                        guard reload else { continue }
                        do {
                            try await index.load(from: redis, keys: keys)
                        } catch {
                            logger.warning("reading the fleet index failed", metadata: ["error": "\(error)"])
                        }
                    }
                }
                let (id, metrics, ledger) = (configuration.consumerName, dispatcher.metrics, dispatcher.ledger)
                group.addTask {
                    await cancelWhenGracefulShutdown {
                        await FleetStats.heartbeat(id: id, metrics: metrics, ledger: ledger, redis: redis, keys: keys, logger: logger)
                    }
                }
                let scheduler = ScheduledPushes(dispatcher: dispatcher, logger: logger)
                group.addTask { await cancelWhenGracefulShutdown { await scheduler.run() } }
                if configuration.consumeCommandStream {
                    group.addTask { await cancelWhenGracefulShutdown { await consumer.run() } }
                }
                if let webhook = configuration.statusWebhook {
                    let posters = webhookRedis.enumerated().map { index, connection in
                        StatusWebhook(webhook: webhook, configuration: configuration, index: index, redis: connection, logger: logger)
                    }
                    let eventLoopGroup = self.group
                    group.addTask {
                        let client = HTTPClient(eventLoopGroup: eventLoopGroup, configuration: webhook.httpClientConfiguration())
                        await withDiscardingTaskGroup { posting in
                            for poster in posters {
                                posting.addTask { await cancelWhenGracefulShutdown { await poster.run(httpClient: client) } }
                            }
                        }
                        try? await client.shutdown()
                    }
                }
                try await app.run()
                group.cancelAll()
            }
        } catch {
            await closeRedis()
            throw error
        }
        await closeRedis()
    }

    private func closeRedis() async {
        await subscriber.close()
        await streamRedis.close()
        for connection in webhookRedis { await connection.close() }
        await redis.close()
    }
}

extension ControlNode: CustomStringConvertible {
    /// How ServiceLifecycle names the node in its logs: no configuration (which holds secrets).
    public var description: String { "ControlNode(\(configuration.host):\(configuration.port))" }
}
