import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A message received on a subscribed channel.
public struct RedisPubSubMessage: Sendable, Hashable {
    public var channel: String
    public var payload: ByteBuffer
}

/// A dedicated subscriber connection whose messages arrive as an async sequence.
///
/// Channels are re-subscribed on every reconnect. `sharded` channels use SSUBSCRIBE (Redis 7
/// sharded pub/sub, which Redis Cluster routes by the channel's slot); others use SUBSCRIBE.
public final class RedisSubscriber: Sendable {
    private struct Channels {
        var plain: Set<String> = []
        var sharded: Set<String> = []
    }

    private let connection: RedisConnection
    private let channels = NIOLockedValueBox(Channels())
    /// Every message on every subscribed channel, in arrival order.
    public let messages: AsyncStream<RedisPubSubMessage>
    private let continuation: AsyncStream<RedisPubSubMessage>.Continuation
    private let subscribedHooks: NIOLockedValueBox<[@Sendable (String) -> Void]>

    public init(configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger) {
        let (stream, continuation) = AsyncStream.makeStream(of: RedisPubSubMessage.self, bufferingPolicy: .unbounded)
        self.messages = stream
        self.continuation = continuation
        let subscribedHooks = NIOLockedValueBox<[@Sendable (String) -> Void]>([])
        self.subscribedHooks = subscribedHooks
        self.connection = RedisConnection(configuration: configuration, eventLoop: eventLoop, logger: logger) { reply in
            // RESP2 pushes: [message, channel, payload] or [smessage, channel, payload]; and
            // [subscribe, channel, count] or [ssubscribe, channel, count] once Redis has the
            // subscription.
            guard case .array(let parts) = reply, parts.count == 3, let kind = parts[0].string, let channel = parts[1].string else {
                return
            }
            switch kind {
            case "message", "smessage":
                guard case .bulkString(let payload) = parts[2] else { return }
                continuation.yield(RedisPubSubMessage(channel: channel, payload: payload))
            case "subscribe", "ssubscribe":
                for hook in subscribedHooks.withLockedValue({ $0 }) { hook(channel) }
            default:
                break
            }
        }
        let channels = self.channels
        connection.onConnect { _ in
            let current = channels.withLockedValue { $0 }
            var commands: [RedisCommand] = []
            if !current.plain.isEmpty { commands.append(RedisCommand("SUBSCRIBE", current.plain.sorted())) }
            if !current.sharded.isEmpty {
                // SSUBSCRIBE takes channels of one slot at a time in a cluster; one per command is always valid.
                for channel in current.sharded.sorted() { commands.append(RedisCommand("SSUBSCRIBE", channel)) }
            }
            return commands
        }
    }

    /// Whether the subscriber connection is up.
    public var isConnected: Bool { get async { await connection.isConnected } }

    /// Connects (and keeps reconnecting).
    public func start() { connection.start() }

    /// Registers a callback told `true` on every connect and `false` on every disconnect.
    public func onStateChange(_ hook: @escaping @Sendable (Bool) -> Void) { connection.onStateChange(hook) }

    /// Registers a callback told a channel's name each time Redis confirms a subscription to it
    /// (after every reconnect too): from then on, what is published there arrives. A
    /// connection state change comes earlier, before Redis has taken the subscription.
    public func onSubscribed(_ hook: @escaping @Sendable (String) -> Void) {
        subscribedHooks.withLockedValue { $0.append(hook) }
    }

    /// Subscribes to channels; the subscription survives reconnects.
    public func subscribe(_ names: [String], sharded: Bool = false) {
        let added = channels.withLockedValue { channels in
            names.filter { sharded ? channels.sharded.insert($0).inserted : channels.plain.insert($0).inserted }
        }
        guard !added.isEmpty else { return }
        if sharded {
            connection.fireAndForget(added.map { RedisCommand("SSUBSCRIBE", $0) })
        } else {
            connection.fireAndForget([RedisCommand("SUBSCRIBE", added)])
        }
    }

    /// Closes the connection and finishes ``messages``.
    public func close() async {
        await connection.close()
        continuation.finish()
    }
}
