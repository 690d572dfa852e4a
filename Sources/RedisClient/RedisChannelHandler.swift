import CHiredis
import CoreMetrics
import NIOCore

/// What every Redis connection of the process adds to: how long a request (the commands of
/// one write) waited for its replies, error replies and failed requests by kind, and the
/// commands still waiting for replies. Made by ``register()``, after the metrics backend is
/// set up, so that they are exported (at 0) before anything is counted.
public enum RedisMetrics {
    public static func register() {
        _ = (requestDuration, errorReplies, timeouts, connectionErrors, pendingCommands)
    }

    static let requestDuration = Timer(label: "pushfleet_redis_request_duration_seconds")
    static let errorReplies = Counter(label: "pushfleet_redis_errors_total", dimensions: [("kind", "reply")])
    static let timeouts = Counter(label: "pushfleet_redis_errors_total", dimensions: [("kind", "timeout")])
    static let connectionErrors = Counter(label: "pushfleet_redis_errors_total", dimensions: [("kind", "connection")])
    static let pendingCommands = Meter(label: "pushfleet_redis_pending_commands")
}

/// A batch of commands written in one flush; its promise gets one reply per command, in order.
struct RedisRequest {
    var commands: [RedisCommand]
    /// `nil` for fire-and-forget writes: their replies are read and dropped (on a subscriber
    /// connection, replies arrive as pushes instead).
    var promise: EventLoopPromise<[RedisReply]>?
}

/// Encodes requests with hiredis and matches hiredis-parsed replies to them in order.
///
/// On a subscriber connection every reply is handed to `onPush` instead.
final class RedisChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisRequest
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        var expected: Int
        /// nil for fire-and-forget requests: their replies are counted off and dropped, error
        /// replies logged (``onDroppedError``).
        var promise: EventLoopPromise<[RedisReply]>?
        /// When the replies must have arrived.
        var deadline: NIODeadline
        /// Its time goes into the request duration histogram (not for blocking reads).
        var timed: Bool
    }

    private let reader: UnsafeMutablePointer<redisReader>
    private var pending = CircularBuffer<Pending>()
    /// Replies gathered so far for the oldest pending request (kept here, not inside the queue's
    /// element, so appending does not copy the array each time).
    private var replies: [RedisReply] = []
    private let commandTimeout: TimeAmount
    private let onPush: ((RedisReply) -> Void)?
    /// Told of an error reply to a fire-and-forget command (the connection logs it).
    private let onDroppedError: ((String) -> Void)?
    /// Replies still to come for the oldest pending request when nobody waits for them.
    private var dropping = 0
    private var context: ChannelHandlerContext?
    /// A write was refused because this server is a replica now.
    private var demoted = false
    /// The one timer watching the oldest request's deadline (one timer per connection, not
    /// one per request: scheduling is not free at tens of thousands of requests a second).
    private var timer: Scheduled<Void>?

    init(commandTimeout: TimeAmount, onPush: ((RedisReply) -> Void)?, onDroppedError: ((String) -> Void)? = nil) {
        self.reader = redisReaderCreate()
        self.commandTimeout = commandTimeout
        self.onPush = onPush
        self.onDroppedError = onDroppedError
    }

    deinit {
        redisReaderFree(reader)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        failAll(RedisError(.connectionClosed, "handler removed"))
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        var buffer = context.channel.allocator.buffer(capacity: 64 * request.commands.count)
        for command in request.commands { command.encode(into: &buffer) }
        // Replies match requests by position, so every request on a command connection takes
        // its place in the queue, even one whose replies nobody waits for.
        if onPush == nil && !request.commands.isEmpty {
            pending.append(
                Pending(
                    expected: request.commands.count, promise: request.promise, deadline: .now() + commandTimeout,
                    timed: !request.commands.contains { $0.mayBlock }))
            RedisMetrics.pendingCommands.increment(by: Double(request.commands.count))
            if timer == nil { armTimer(context: context) }
        } else {
            request.promise?.succeed([])
        }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let fed = buffer.withUnsafeReadableBytes { bytes in
            redisReaderFeed(reader, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        guard fed == REDIS_OK else { return protocolFailure(context: context) }
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisReaderGetReply(reader, &raw) == REDIS_OK else { return protocolFailure(context: context) }
            guard let raw else {
                // A replica answered (its master failed over, and this server was demoted):
                // the connection closes, and the client reconnects to the master there is now.
                if demoted { context.close(promise: nil) }
                return
            }
            let pointer = raw.assumingMemoryBound(to: redisReply.self)
            let reply = RedisReply(hiredis: pointer)
            freeReplyObject(raw)
            if case .error(let message) = reply, message.hasPrefix("READONLY") { demoted = true }
            deliver(reply)
        }
    }

    private func deliver(_ reply: RedisReply) {
        if let onPush {
            onPush(reply)
            return
        }
        guard let first = pending.first else { return }
        if case .error = reply { RedisMetrics.errorReplies.increment() }
        guard let promise = first.promise else {
            // Nobody waits: no array of replies is built, only errors are told.
            if case .error(let message) = reply { onDroppedError?(message) }
            dropping += 1
            if dropping == first.expected {
                answered(pending.removeFirst())
                dropping = 0
            }
            return
        }
        if replies.isEmpty { replies.reserveCapacity(first.expected) }
        replies.append(reply)
        if replies.count == first.expected {
            answered(pending.removeFirst())
            let done = replies
            replies = []
            promise.succeed(done)
        }
    }

    /// A request's replies are all in: how long they took (it was written `commandTimeout`
    /// before its deadline).
    private func answered(_ request: Pending) {
        RedisMetrics.pendingCommands.decrement(by: Double(request.expected))
        guard request.timed else { return }
        let written = request.deadline - commandTimeout
        RedisMetrics.requestDuration.recordNanoseconds((NIODeadline.now() - written).nanoseconds)
    }

    private func protocolFailure(context: ChannelHandlerContext) {
        let message = withUnsafeBytes(of: reader.pointee.errstr) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        failAll(RedisError(.protocolError, message))
        context.close(promise: nil)
    }

    /// Schedules a check at the oldest request's deadline.
    private func armTimer(context: ChannelHandlerContext) {
        guard let first = pending.first else { return }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: first.deadline) { handler.value.checkDeadline() }
    }

    private func checkDeadline() {
        timer = nil
        guard let first = pending.first, let context else { return }
        guard first.deadline <= .now() else { return armTimer(context: context) }
        // Replies are matched by position, so after a lost reply the connection is unusable.
        RedisMetrics.timeouts.increment()
        failAll(RedisError(.timeout, "no reply within \(commandTimeout.nanoseconds / 1_000_000) ms"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(RedisError(.connectionClosed, "connection to redis at \(peer(context)) closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(RedisError(.connectionClosed, "connection to redis at \(peer(context)): \(error)"))
        context.close(promise: nil)
    }

    private func peer(_ context: ChannelHandlerContext) -> String {
        let remote = context.channel.remoteAddress
        return "\(remote?.ipAddress ?? "?"):\(remote?.port ?? 0) from port \(context.channel.localAddress?.port ?? 0)"
    }

    private func failAll(_ error: RedisError) {
        timer?.cancel()
        timer = nil
        replies = []
        dropping = 0
        if !pending.isEmpty, error.code != .timeout { RedisMetrics.connectionErrors.increment() }
        while let item = pending.popFirst() {
            RedisMetrics.pendingCommands.decrement(by: Double(item.expected))
            item.promise?.fail(error)
        }
    }
}
