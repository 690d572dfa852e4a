import Foundation
import MQTTCodec
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import RedisClient

/// How much load to offer, for how long.
public struct BenchPace: Sendable {
    /// Messages per second in all (0: as fast as the windows and sockets allow).
    public var rate: Int
    /// Messages in all (0: no limit).
    public var messages: Int
    /// Seconds at most.
    public var seconds: Double
    /// Payload size in bytes (at least the 16-byte header).
    public var size: Int

    public init(rate: Int, messages: Int, seconds: Double, size: Int) {
        self.rate = rate
        self.messages = messages
        self.seconds = seconds
        self.size = size
    }
}

/// Waits until item `index` of a sequence paced at `rate` per second (0: no pacing) is due.
func waitUntilDue(_ index: Int, rate: Int, from started: ContinuousClock.Instant) async throws {
    guard rate > 0 else { return }
    let due = started + .nanoseconds(Int64(index) * 1_000_000_000 / Int64(rate))
    if due > ContinuousClock.now { try await Task.sleep(until: due) }
}

/// Message number `k` goes to target `k % targets` with sequence number `k / targets`, so every
/// target gets its own gap-free sequence.
final class MessageCounter: Sendable {
    private let next = NIOLockedValueBox(0)
    let limit: Int

    init(limit: Int) { self.limit = limit == 0 ? .max : limit }

    /// The next `count` message numbers (fewer at the limit).
    func take(_ count: Int) -> Range<Int> {
        next.withLockedValue { next in
            let start = next
            next = min(limit, next + count)
            return start..<next
        }
    }
}

/// Publishing over MQTT: each publisher connection takes its share of the topics and the rate.
public enum MQTTPublishLoad {
    /// Publishes round robin over `topics` (message k to topic k % count, sequence k / count)
    /// and returns the number published.
    public static func run(publishers: [BenchChannel], topics: [String], qos: MQTTQoS, pace: BenchPace) async -> Int {
        guard !publishers.isEmpty, !topics.isEmpty else { return 0 }
        let perPublisher = publishers.count
        var futures: [EventLoopFuture<Int>] = []
        for (index, publisher) in publishers.enumerated() {
            let share = stride(from: index, to: topics.count, by: perPublisher).map { topics[$0] }
            guard !share.isEmpty else { continue }
            let limit = pace.messages == 0 ? Int.max : (pace.messages * share.count + topics.count - 1) / topics.count
            let rate = Double(pace.rate) * Double(share.count) / Double(topics.count)
            let future = publisher.channel.eventLoop.flatSubmit {
                do {
                    let handler = try publisher.channel.pipeline.syncOperations.handler(type: BenchConnection.self)
                    let pump = Pump(
                        handler: handler, loop: publisher.channel.eventLoop, topics: share, qos: qos, rate: rate, limit: limit,
                        seconds: pace.seconds, size: pace.size)
                    return pump.start()
                } catch {
                    return publisher.channel.eventLoop.makeFailedFuture(error)
                }
            }
            futures.append(future)
        }
        var total = 0
        for future in futures { total += (try? await future.get()) ?? 0 }
        return total
    }

    /// Publishes from one connection on its event loop, as fast as rate, window and socket allow.
    final class Pump {
        let handler: BenchConnection
        let loop: any EventLoop
        let topics: [String]
        let qos: MQTTQoS
        let rate: Double
        let limit: Int
        let size: Int
        let started = NIODeadline.now()
        let deadline: NIODeadline
        var sequence: [UInt64]
        var next = 0
        var sent = 0
        var scheduled = false
        let done: EventLoopPromise<Int>

        init(
            handler: BenchConnection, loop: any EventLoop, topics: [String], qos: MQTTQoS, rate: Double, limit: Int, seconds: Double,
            size: Int
        ) {
            self.handler = handler
            self.loop = loop
            self.topics = topics
            self.qos = qos
            self.rate = rate
            self.limit = limit
            self.size = size
            self.deadline = .now() + .nanoseconds(Int64(seconds * 1e9))
            self.sequence = Array(repeating: 0, count: topics.count)
            self.done = loop.makePromise()
        }

        func start() -> EventLoopFuture<Int> {
            let bound = NIOLoopBound(self, eventLoop: loop)
            handler.onRoom = { bound.value.wake() }
            pump()
            return done.futureResult
        }

        private func wake() {
            guard !scheduled else { return }
            pump()
        }

        private func pump() {
            scheduled = false
            let now = NIODeadline.now()
            // Done once everything was sent and acknowledged (closing with acknowledgements
            // unread would reset the connection and lose what the server had not read yet).
            let finished = sent >= limit || now >= deadline
            if finished && (handler.inflight == 0 || now >= deadline + .seconds(10)) {
                handler.onRoom = nil
                return done.succeed(sent)
            }
            var allowed = Int.max
            if rate > 0 {
                let elapsed = Double((now - started).nanoseconds) / 1e9
                allowed = Int(elapsed * rate) - sent + 1
            }
            var written = 0
            while !finished, written < allowed, sent < limit, handler.canPublish(qos: qos) {
                let payload = BenchPayload(sentAtNanos: BenchPayload.now(), sequence: sequence[next]).encoded(size: size)
                handler.publish(topic: topics[next], payload: payload, qos: qos)
                sequence[next] += 1
                next = (next + 1) % topics.count
                sent += 1
                written += 1
                if written % 128 == 0 { handler.flush() }
            }
            handler.flush()
            scheduled = true
            let bound = NIOLoopBound(self, eventLoop: loop)
            loop.scheduleTask(in: .milliseconds(1)) { if bound.value.scheduled { bound.value.pump() } }
        }
    }
}

/// Pushing through the control API's batch endpoint, one message per terminal per entry.
public struct APIPushLoad: Sendable {
    public var host: String
    public var port: Int
    public var apiKey: String?
    public var terminals: [String]
    public var qos: Int
    public var ttl: Int
    /// Messages per request.
    public var batch: Int
    /// Requests in flight.
    public var concurrency: Int
    /// Push to this topic instead of to terminals (message k gets sequence k); `*broadcast`
    /// pushes to every terminal.
    public var topic: String?

    public init(
        host: String, port: Int, apiKey: String?, terminals: [String], qos: Int, ttl: Int, batch: Int, concurrency: Int,
        topic: String? = nil
    ) {
        self.topic = topic
        self.host = host
        self.port = port
        self.apiKey = apiKey
        self.terminals = terminals
        self.qos = qos
        self.ttl = ttl
        self.batch = batch
        self.concurrency = concurrency
    }

    /// Pushes and returns the number of messages the API accepted.
    public func run(pace: BenchPace, stats: BenchStats, group: any EventLoopGroup) async throws -> Int {
        let counter = MessageCounter(limit: pace.messages)
        let started = ContinuousClock.now
        let deadline = started + .nanoseconds(Int64(pace.seconds * 1e9))
        let accepted = NIOLockedValueBox(0)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for _ in 0..<max(1, concurrency) {
                tasks.addTask {
                    let client = try await HTTPBatchClient.connect(host: host, port: port, group: group)
                    defer { client.close() }
                    while ContinuousClock.now < deadline {
                        let numbers = counter.take(batch)
                        if numbers.isEmpty { return }
                        try await waitUntilDue(numbers.lowerBound, rate: pace.rate, from: started)
                        let body = self.body(for: numbers, size: pace.size)
                        let status = try await client.post("/v1/push/batch", body: body, apiKey: apiKey)
                        guard status == 202 else { throw BenchError("the API answered \(status)") }
                        stats.sent(numbers.count)
                        accepted.withLockedValue { $0 += numbers.count }
                    }
                }
            }
            try await tasks.waitForAll()
        }
        return accepted.withLockedValue { $0 }
    }

    func body(for numbers: Range<Int>, size: Int) -> String {
        var text = #"{"messages":["#
        for (offset, number) in numbers.enumerated() {
            let sequence = topic == nil ? UInt64(number / terminals.count) : UInt64(number)
            let payload = BenchPayload(sentAtNanos: BenchPayload.now(), sequence: sequence).encoded(size: size)
            if offset > 0 { text += "," }
            if topic == "*broadcast" {
                text += #"{"broadcast":true,"payloadBase64":""# + Data(payload).base64EncodedString()
            } else if let topic {
                text += #"{"topic":""# + topic + #"","payloadBase64":""# + Data(payload).base64EncodedString()
            } else {
                text += #"{"to":[""# + terminals[number % terminals.count] + #""],"payloadBase64":""# + Data(payload).base64EncodedString()
            }
            text += #"","qos":\#(qos),"ttl":\#(ttl)}"#
        }
        return text + "]}"
    }
}

/// Pushing through the Redis command stream (`XADD`), pipelined.
public struct StreamPushLoad: Sendable {
    public var redis: RedisConfiguration
    public var stream: String
    public var terminals: [String]
    public var qos: Int
    public var ttl: Int
    public var batch: Int

    public init(redis: RedisConfiguration, stream: String, terminals: [String], qos: Int, ttl: Int, batch: Int) {
        self.redis = redis
        self.stream = stream
        self.terminals = terminals
        self.qos = qos
        self.ttl = ttl
        self.batch = batch
    }

    public func run(pace: BenchPace, stats: BenchStats, group: any EventLoopGroup) async throws -> Int {
        let connection = RedisConnection(configuration: redis, eventLoop: group.next(), logger: .init(label: "bench"))
        connection.start()
        defer { Task { await connection.close() } }
        let counter = MessageCounter(limit: pace.messages)
        let started = ContinuousClock.now
        let deadline = started + .nanoseconds(Int64(pace.seconds * 1e9))
        var added = 0
        while ContinuousClock.now < deadline {
            let numbers = counter.take(batch)
            if numbers.isEmpty { break }
            try await waitUntilDue(numbers.lowerBound, rate: pace.rate, from: started)
            let commands = numbers.map { number in
                let payload = BenchPayload(sentAtNanos: BenchPayload.now(), sequence: UInt64(number / terminals.count)).encoded(
                    size: pace.size)
                return RedisCommand(
                    "XADD", stream, "*", "to", terminals[number % terminals.count], "payloadBase64", Data(payload).base64EncodedString(),
                    "qos", String(qos), "ttl", String(ttl))
            }
            for reply in try await connection.pipeline(commands) { _ = try reply.throwingError() }
            stats.sent(numbers.count)
            added += numbers.count
        }
        return added
    }
}

/// A keep-alive HTTP/1.1 connection sending one request at a time.
final class HTTPBatchClient: Sendable {
    private let channel: any Channel
    private let collector: NIOLoopBound<ResponseCollector>

    private init(channel: any Channel, collector: NIOLoopBound<ResponseCollector>) {
        self.channel = channel
        self.collector = collector
    }

    static func connect(host: String, port: Int, group: any EventLoopGroup) async throws -> HTTPBatchClient {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector())
                }
            }
            .connect(host: host, port: port).get()
        let collector = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ResponseCollector.self), eventLoop: channel.eventLoop)
        }.get()
        return HTTPBatchClient(channel: channel, collector: collector)
    }

    /// POSTs a JSON body and returns the response status.
    func post(_ path: String, body: String, apiKey: String?) async throws -> Int {
        let channel = self.channel
        let collector = self.collector
        return try await channel.eventLoop.flatSubmit {
            let promise = channel.eventLoop.makePromise(of: Int.self)
            collector.value.pending = promise
            var headers = HTTPHeaders([
                ("Host", "bench"), ("Content-Type", "application/json"), ("Content-Length", String(body.utf8.count)),
            ])
            if let apiKey { headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
            let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path, headers: headers)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(channel.allocator.buffer(string: body))), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            return promise.futureResult
        }.get()
    }

    func close() { channel.close(promise: nil) }

    final class ResponseCollector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        var pending: EventLoopPromise<Int>?
        var status = 0

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): status = Int(head.status.code)
            case .body: break
            case .end:
                pending?.succeed(status)
                pending = nil
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            pending?.fail(ChannelError.ioOnClosedChannel)
            pending = nil
        }
    }
}

public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
