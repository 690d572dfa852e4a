import MQTTCodec
import NIOCore
import NIOPosix

/// Where benchmark connections go, and from which local addresses.
public struct BenchTarget: Sendable {
    public var host: String
    /// Connections are spread over these ports round robin (several push nodes).
    public var ports: [Int]
    /// Local source addresses, round robin: each has its own ephemeral port range, so more
    /// than ~28,000 connections to one server address need several (127.0.0.2, 127.0.0.3, ...).
    public var sources: [String]

    public init(host: String, ports: [Int], sources: [String] = []) {
        self.host = host
        self.ports = ports
        self.sources = sources
    }
}

/// Opens benchmark MQTT connections, paced.
public struct BenchConnector: Sendable {
    public let target: BenchTarget
    public let stats: BenchStats
    public let group: any EventLoopGroup

    public init(target: BenchTarget, stats: BenchStats, group: any EventLoopGroup) {
        self.target = target
        self.stats = stats
        self.group = group
    }

    /// Opens one connection per login, at most `rate` per second (0: as fast as `parallel`
    /// handshakes in flight allow: a new one starts as soon as one finishes), and returns the
    /// connections that logged in.
    public func open(
        _ logins: [BenchLogin], rate: Int, parallel: Int = 64, progress: (@Sendable (Int) -> Void)? = nil
    ) async -> [BenchChannel] {
        let started = ContinuousClock.now
        return await withTaskGroup(of: BenchChannel?.self) { group in
            var opened: [BenchChannel] = []
            opened.reserveCapacity(logins.count)
            var inFlight = 0
            for (index, login) in logins.enumerated() {
                if inFlight >= max(1, parallel), let result = await group.next() {
                    inFlight -= 1
                    if let result { opened.append(result) }
                }
                try? await waitUntilDue(index, rate: rate, from: started)
                let attempt = connect(login, number: index)
                group.addTask { try? await attempt.get() }
                inFlight += 1
                progress?(index + 1)
            }
            for await result in group {
                if let result { opened.append(result) }
            }
            return opened
        }
    }

    private func connect(_ login: BenchLogin, number: Int) -> EventLoopFuture<BenchChannel> {
        let loop = group.next()
        let ready = loop.makePromise(of: Bool.self)
        let stats = self.stats
        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = BenchConnection(login: login, stats: stats) { ready.succeed($0) }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(MQTTPacketDecoder(maximumPacketSize: 1 << 22)),
                        MessageToByteHandler(MQTTPacketEncoder()),
                        handler,
                    ])
                }
            }
        if !target.sources.isEmpty, let source = try? SocketAddress(ipAddress: target.sources[number % target.sources.count], port: 0) {
            // IP_BIND_ADDRESS_NO_PORT (24): the port is picked at connect time, per destination;
            // picking it at bind time searches the whole range and slows down as it fills.
            let noPort = ChannelOptions.Types.SocketOption(level: .ip, name: NIOBSDSocket.Option(rawValue: 24))
            bootstrap = bootstrap.channelOption(noPort, value: 1).bind(to: source)
        }
        let port = target.ports[number % target.ports.count]
        // A numeric host is not resolved again for every connection (getaddrinfo and happy
        // eyeballs were 40% of the load tool's CPU while connecting).
        let connected: EventLoopFuture<any Channel>
        if let address = try? SocketAddress(ipAddress: target.host, port: port) {
            connected = bootstrap.connect(to: address)
        } else {
            connected = bootstrap.connect(host: target.host, port: port)
        }
        return
            connected
            .flatMapErrorWithEventLoop { error, loop in
                stats.failed()
                return loop.makeFailedFuture(error)
            }
            .flatMap { channel in
                ready.futureResult.flatMapThrowing { success in
                    guard success else { throw ChannelError.ioOnClosedChannel }
                    return BenchChannel(channel: channel)
                }
            }
    }
}

/// An open benchmark connection.
public struct BenchChannel: Sendable {
    public let channel: any Channel

    /// Runs `body` with the connection's handler, on its event loop.
    func withHandler<T: Sendable>(_ body: @escaping @Sendable (BenchConnection) -> T) -> EventLoopFuture<T> {
        channel.eventLoop.submit {
            body(try channel.pipeline.syncOperations.handler(type: BenchConnection.self))
        }
    }

    public func close() {
        channel.close(promise: nil)
    }

    /// Sends DISCONNECT, then closes.
    public func disconnect() async {
        let channel = self.channel
        try? await channel.writeAndFlush(MQTTPacket.disconnect(MQTTDisconnectPacket())).get()
        try? await channel.close()
    }
}
