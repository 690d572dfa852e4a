import AsyncHTTPClient
import FleetCore
import FleetRedis
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOSSL
import RedisClient

/// Where status events are posted, and the bounds on trying (`--status-webhook`).
public struct StatusWebhookConfiguration: Sendable {
    /// An `http://` or `https://` URL. Redirects are not followed.
    public var url: String
    /// Signs each request (`PushFleet-Signature`); none: unsigned.
    public var secret: String?
    /// A PEM file of CA certificates trusted for an `https://` URL besides the system's (a
    /// receiver with a certificate of a private CA).
    public var caFile: String?
    /// Most stream entries posted in one request: each holds the events of one status write,
    /// at most ``StatusEvent/maximumPerEntry``.
    public var batchSize = 20
    /// Seconds one request may take, connecting included; must be under the control node's
    /// `claimIdle` (or another control node takes the events over while it runs).
    public var timeout = 10
    /// Seconds after it was recorded an event is given up: a receiver down longer loses the
    /// events older than this (they are dropped, counted and logged).
    public var maximumAge = 3_600
    /// Longest wait between two tries of a batch, in seconds.
    public var maximumBackoff = 30
    /// Requests one control node has in flight at once, each by a consumer of its own
    /// (`<consumer>-webhook-<n>`): a receiver far away answers a request in tens of
    /// milliseconds, and one request at a time would cap a control node at
    /// `batchSize` entries per round trip.
    public var concurrency = 4

    public init(url: String, secret: String? = nil) {
        self.url = url
        self.secret = secret
    }

    /// The HTTP client's settings: redirects off, `timeout` to connect and to read, a
    /// connection per poster, and `caFile` trusted.
    func httpClientConfiguration() -> HTTPClient.Configuration {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile { tls.additionalTrustRoots = [.file(caFile)] }
        var http = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(Int64(timeout)), read: .seconds(Int64(timeout))))
        http.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = max(8, concurrency)
        return http
    }

    /// The wait after try `attempt` (from 0) failed: 1 s, 2 s, 4 s, ... up to `maximumBackoff`.
    func backoff(_ attempt: Int) -> Duration {
        .seconds(min(maximumBackoff, 1 << min(attempt, 16)))
    }

    /// Why `url` cannot be posted to, or nil.
    public static func problem(with url: String) -> String? {
        guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = parsed.host, !host.isEmpty
        else { return "not an http:// or https:// URL with a host" }
        return nil
    }
}

/// Posts the status event stream to the webhook, in batches, through the consumer group
/// ``FleetKeys/webhookGroup``: each event goes to the webhook through one poster (every
/// control node with the option runs ``StatusWebhookConfiguration/concurrency`` of them, each
/// a consumer with a connection of its own), and is acknowledged (XACK) once the receiver
/// answered 2xx. A batch the receiver refuses or does not answer is tried again, the wait
/// doubling from 1 s up to `maximumBackoff` (or the receiver's `Retry-After`), until it is
/// taken or its events pass `maximumAge`. Events left pending by a control node that died are
/// claimed by another after `claimIdle`, so delivery is at least once: a receiver drops
/// repeats by the event `id`.
struct StatusWebhook: Sendable {
    let webhook: StatusWebhookConfiguration
    let configuration: ControlNodeConfiguration
    /// This poster's name in the group (one of the control node's ``StatusWebhookConfiguration/concurrency``).
    let consumer: String
    /// A dedicated connection: XREADGROUP BLOCK holds it.
    let redis: RedisConnection
    let logger: Logger
    let metrics: Metrics

    var keys: FleetKeys { configuration.keys }
    var claimIdle: Duration { .seconds(configuration.claimIdle) }

    /// The consumer name of a control node's poster `index`.
    static func consumer(_ index: Int, of configuration: ControlNodeConfiguration) -> String {
        "\(configuration.consumerName)-webhook-\(index)"
    }

    struct Metrics: Sendable {
        let posted = Counter(label: "pushfleet_webhook_events_total", dimensions: [("result", "posted")])
        let dropped = Counter(label: "pushfleet_webhook_events_total", dimensions: [("result", "dropped")])
        let accepted = Counter(label: "pushfleet_webhook_requests_total", dimensions: [("result", "accepted")])
        let refused = Counter(label: "pushfleet_webhook_requests_total", dimensions: [("result", "refused")])
        let failed = Counter(label: "pushfleet_webhook_requests_total", dimensions: [("result", "failed")])
        /// Seconds since the oldest event not yet posted was recorded (0: none waits), per poster.
        let delay: Gauge

        init(poster: Int) {
            delay = Gauge(label: "pushfleet_webhook_delay_seconds", dimensions: [("poster", String(poster))])
        }
    }

    init(webhook: StatusWebhookConfiguration, configuration: ControlNodeConfiguration, index: Int, redis: RedisConnection, logger: Logger) {
        self.webhook = webhook
        self.configuration = configuration
        self.consumer = Self.consumer(index, of: configuration)
        self.redis = redis
        self.logger = logger
        self.metrics = Metrics(poster: index)
    }

    func run(httpClient: HTTPClient) async {
        redis.start()
        var readOwnPending = true
        var lastClaim = ContinuousClock.now
        var lastCleanup = ContinuousClock.now - FleetScripts.idleConsumerCheckInterval
        while !Task.isCancelled {
            do {
                var entries: [RedisReply]
                if readOwnPending {
                    // After a (re)start, first what this consumer had read and not posted.
                    try await createGroup()
                    entries = try await read(from: "0", block: false)
                    readOwnPending = !entries.isEmpty
                } else if ContinuousClock.now - lastClaim > claimIdle / 2 {
                    lastClaim = .now
                    entries = try await claimAbandoned()
                    if ContinuousClock.now - lastCleanup > FleetScripts.idleConsumerCheckInterval {
                        lastCleanup = .now
                        try await FleetScripts.removeIdleConsumers(
                            redis: redis, stream: keys.statusEvents, group: keys.webhookGroup, keeping: consumer)
                    }
                } else {
                    entries = try await read(from: ">", block: true)
                }
                if entries.isEmpty {
                    metrics.delay.record(0)
                    continue
                }
                var batch = StatusEventBatch(entries: entries)
                guard await post(&batch, with: httpClient) else { return }  // cancelled: left pending
                guard !batch.entryIDs.isEmpty else { continue }
                try await redis.send(RedisCommand("XACK", [keys.statusEvents, keys.webhookGroup] + batch.entryIDs))
            } catch {
                logger.warning("status event stream read failed", metadata: ["error": "\(error)"])
                readOwnPending = true
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Creates the group at the stream's end: a webhook gets the events recorded from when it
    /// is first configured, not the stream's history.
    private func createGroup() async throws {
        do {
            try await redis.send("XGROUP", "CREATE", keys.statusEvents, keys.webhookGroup, "$", "MKSTREAM")
        } catch let error as RedisError where error.message.hasPrefix("BUSYGROUP") {
            // The group exists already.
        }
    }

    private func read(from id: String, block: Bool) async throws -> [RedisReply] {
        let reply = try await redis.send(
            RedisCommand(
                "XREADGROUP",
                ["GROUP", keys.webhookGroup, consumer, "COUNT", String(webhook.batchSize)]
                    + (block ? ["BLOCK", "1000"] : []) + ["STREAMS", keys.statusEvents, id]
            )
        )
        // [[stream, [[id, [field, value, ...]], ...]]]
        guard let streams = reply.array, let first = streams.first?.array, first.count == 2 else { return [] }
        return first[1].array ?? []
    }

    /// Takes over events another consumer read and has not acknowledged for `claimIdle`.
    private func claimAbandoned() async throws -> [RedisReply] {
        let reply = try await redis.send(
            RedisCommand(
                "XAUTOCLAIM", keys.statusEvents, keys.webhookGroup, consumer,
                String(configuration.claimIdle * 1000), "0-0", "COUNT", String(webhook.batchSize)
            )
        )
        guard let parts = reply.array, parts.count >= 2, let entries = parts[1].array else { return [] }
        if !entries.isEmpty {
            logger.info("claimed status events left by another control node", metadata: ["count": "\(entries.count)"])
        }
        return entries
    }

    /// Posts `batch` until the receiver takes it or every event in it is past `maximumAge`;
    /// false when cancelled first (the events stay pending, for this consumer's next start or
    /// another control node).
    private func post(_ batch: inout StatusEventBatch, with httpClient: HTTPClient) async -> Bool {
        var attempt = 0
        var lastRefresh = ContinuousClock.now
        while !Task.isCancelled {
            let now = FleetClock.nowMillis()
            let dropped = batch.dropEvents(addedBefore: now - Int64(webhook.maximumAge) * 1000)
            if dropped > 0 {
                metrics.dropped.increment(by: dropped)
                logger.error(
                    "status events dropped: the webhook did not take them within the maximum age",
                    metadata: ["count": "\(dropped)", "maximumAge": "\(webhook.maximumAge)"])
            }
            guard let oldest = batch.oldestAddedAt else { return true }
            metrics.delay.record(Double(max(0, now - oldest)) / 1000)
            let wait: Duration
            switch await send(batch.body, with: httpClient) {
            case .accepted:
                metrics.accepted.increment()
                metrics.posted.increment(by: batch.events.count)
                return true
            case .refused(let status, let retryAfter):
                metrics.refused.increment()
                wait = retryAfter.map { min($0, .seconds(webhook.maximumBackoff)) } ?? webhook.backoff(attempt)
                logger.warning(
                    "status webhook refused a batch",
                    metadata: ["status": "\(status.code)", "events": "\(batch.events.count)", "retryIn": "\(wait)"])
            case .failed(let error):
                metrics.failed.increment()
                wait = webhook.backoff(attempt)
                logger.warning(
                    "status webhook unreachable", metadata: ["error": "\(error)", "events": "\(batch.events.count)", "retryIn": "\(wait)"])
            }
            attempt += 1
            do { try await Task.sleep(for: wait) } catch { return false }
            // Still this consumer's: reset the entries' idle time so that no other control
            // node claims them while this one keeps trying.
            if ContinuousClock.now - lastRefresh > claimIdle / 3 {
                lastRefresh = .now
                _ = try? await redis.send(
                    RedisCommand(
                        "XCLAIM", [keys.statusEvents, keys.webhookGroup, consumer, "0"] + batch.entryIDs + ["JUSTID"]))
            }
        }
        return false
    }

    enum Outcome {
        case accepted
        case refused(HTTPResponseStatus, retryAfter: Duration?)
        case failed(any Error)
    }

    private func send(_ body: [UInt8], with httpClient: HTTPClient) async -> Outcome {
        var request = HTTPClientRequest(url: webhook.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "pushfleet")
        if let secret = webhook.secret {
            let timestamp = FleetClock.nowSeconds()
            request.headers.add(name: "PushFleet-Timestamp", value: String(timestamp))
            request.headers.add(
                name: "PushFleet-Signature", value: StatusEventBatch.signature(secret: secret, timestamp: timestamp, body: body))
        }
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await httpClient.execute(request, timeout: .seconds(Int64(webhook.timeout)))
            // Read (and forget) what the receiver says, so that the connection is kept.
            _ = try? await response.body.collect(upTo: 64 * 1024)
            if (200..<300).contains(response.status.code) { return .accepted }
            let retryAfter = response.headers.first(name: "Retry-After").flatMap { Int64($0) }.map { Duration.seconds(max(1, $0)) }
            return .refused(response.status, retryAfter: retryAfter)
        } catch {
            return .failed(error)
        }
    }
}
