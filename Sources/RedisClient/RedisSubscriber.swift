import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A message received on a subscribed channel.
public struct RedisPubSubMessage: Sendable, Hashable {
    public var channel: String
    public var payload: ByteBuffer
}

/// What a subscriber hears, in order.
public enum RedisSubscriberEvent: Sendable, Hashable {
    /// A message on a subscribed channel.
    case message(RedisPubSubMessage)
    /// Redis confirmed a subscription to the channel (after every reconnect too): from now on,
    /// what is published there arrives; what was published before did not.
    case subscribed(String)
}

/// A dedicated subscriber connection whose messages arrive as an async sequence.
///
/// Channels are re-subscribed on every reconnect. `sharded` channels use SSUBSCRIBE (Redis 7
/// sharded pub/sub, which Redis Cluster routes by the channel's slot); others use SUBSCRIBE.
/// At most `bufferLimit` events wait for the consumer; beyond it events are dropped and
/// ``takeOverflow()`` says so, so the consumer can read the state it missed from Redis.
public final class RedisSubscriber: Sendable {
    private struct Channels {
        var plain: Set<String> = []
        var sharded: Set<String> = []
    }

    private let connection: RedisConnection
    private let channels = NIOLockedValueBox(Channels())
    /// Every event, in arrival order.
    public let events: AsyncStream<RedisSubscriberEvent>
    private let continuation: AsyncStream<RedisSubscriberEvent>.Continuation
    private let overflowed: NIOLockedValueBox<Int>

    public init(configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger, bufferLimit: Int = 100_000) {
        let (stream, continuation) = AsyncStream.makeStream(of: RedisSubscriberEvent.self, bufferingPolicy: .bufferingOldest(bufferLimit))
        self.events = stream
        self.continuation = continuation
        let overflowed = NIOLockedValueBox(0)
        self.overflowed = overflowed
        self.connection = RedisConnection(configuration: configuration, eventLoop: eventLoop, logger: logger) { reply in
            // RESP2 pushes: [message, channel, payload] or [smessage, channel, payload]; and
            // [subscribe, channel, count] or [ssubscribe, channel, count] once Redis has the
            // subscription.
            guard case .array(let parts) = reply, parts.count == 3, let kind = parts[0].string, let channel = parts[1].string else {
                return
            }
            let event: RedisSubscriberEvent
            switch kind {
            case "message", "smessage":
                guard case .bulkString(let payload) = parts[2] else { return }
                event = .message(RedisPubSubMessage(channel: channel, payload: payload))
            case "subscribe", "ssubscribe":
                event = .subscribed(channel)
            default:
                return
            }
            if case .dropped = continuation.yield(event) {
                let first = overflowed.withLockedValue { count in
                    count += 1
                    return count == 1
                }
                if first { logger.warning("subscriber buffer full: dropping events", metadata: ["limit": "\(bufferLimit)"]) }
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

    /// The messages of ``events``, without the subscription confirmations.
    public var messages: AsyncCompactMapSequence<AsyncStream<RedisSubscriberEvent>, RedisPubSubMessage> {
        events.compactMap {
            guard case .message(let message) = $0 else { return nil }
            return message
        }
    }

    /// The number of events dropped since the last call because the consumer fell
    /// `bufferLimit` behind (0: none); the consumer has missed messages and should read the
    /// state they announced from Redis.
    public func takeOverflow() -> Int {
        overflowed.withLockedValue { count in
            defer { count = 0 }
            return count
        }
    }

    /// Whether the subscriber connection is up.
    public var isConnected: Bool { get async { await connection.isConnected } }

    /// Connects (and keeps reconnecting).
    public func start() { connection.start() }

    /// Registers a callback told `true` on every connect and `false` on every disconnect.
    public func onStateChange(_ hook: @escaping @Sendable (Bool) -> Void) { connection.onStateChange(hook) }

    /// Subscribes to channels; the subscription survives reconnects.
    public func subscribe(_ names: [String], sharded: Bool = false) {
        let added = channels.withLockedValue { channels in
            names.filter { sharded ? channels.sharded.insert($0).inserted : channels.plain.insert($0).inserted }
        }
        guard !added.isEmpty else { return }
        // Not connected yet: the connect hook subscribes to every channel, these included.
        if sharded {
            connection.fireAndForgetIfConnected(added.map { RedisCommand("SSUBSCRIBE", $0) })
        } else {
            connection.fireAndForgetIfConnected([RedisCommand("SUBSCRIBE", added)])
        }
    }

    /// Closes the connection and finishes ``messages``.
    public func close() async {
        await connection.close()
        continuation.finish()
    }
}
