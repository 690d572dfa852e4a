import ArgumentParser
import BenchKit
import FleetCore
import Foundation
import MQTTCodec
import NIOCore
import NIOPosix
import RedisClient

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Load tool: open terminals, receive and time messages, push or publish load.",
        discussion: """
            Payloads carry their send time and a sequence number per target, so receivers report
            latency, lost and duplicated messages. Progress goes to stderr once a second; the last
            line on stdout is a JSON summary. Past ~28,000 connections per server address, give
            several --sources (127.0.0.2, ...); past 20,000 per process, run several processes
            with --start.
            """,
        subcommands: [BenchConnect.self, BenchSubscribe.self, BenchPublish.self]
    )
}

/// Which terminals, where.
struct BenchTerminals: ParsableArguments {
    @Option(help: "Server host.")
    var host = "127.0.0.1"

    @Option(help: "Server ports, comma separated; connections go round robin.")
    var port = "1883"

    @Option(help: "Local source addresses, comma separated (127.0.0.2,127.0.0.3,...).")
    var sources = ""

    @Option(help: "Number of terminals.")
    var count = 1000

    @Option(help: "Index of the first terminal (to split terminals over processes).")
    var start = 0

    @Option(help: "Terminal id prefix: ids are <prefix><index>.")
    var prefix = "bench-"

    @Option(help: "Credential secret: terminals present credentials minted with it (default: anonymous).")
    var secret: String?

    @Option(help: "Topic each terminal subscribes to, %i = its index (default: none; PushFleet terminals have push/<id>).")
    var topic: String?

    @Option(help: "Subscription QoS.")
    var qos = 1

    @Option(help: "Connections opened per second (0: as fast as --parallel allows).")
    var connectRate = 0

    @Option(help: "Connection handshakes (TCP, CONNECT, CONNACK) in flight at most.")
    var parallel = 64

    @Flag(help: "Persistent sessions (clean session off): what is published while they are away waits for them.")
    var persistent = false

    var target: BenchTarget {
        BenchTarget(
            host: host, ports: port.split(separator: ",").compactMap { Int($0) },
            sources: sources.split(separator: ",").map(String.init))
    }

    var logins: [BenchLogin] {
        let authority = secret.map { CredentialAuthority(secret: $0) }
        let now = FleetClock.nowMillis()
        let qos = MQTTQoS(rawValue: UInt8(clamping: self.qos)) ?? .atLeastOnce
        return (start..<start + count).map { index in
            let id = "\(prefix)\(index)"
            let password = authority?.issue(terminal: id, ttl: 86_400, nowMillis: now).password
            let topics = topic.map { [$0.replacingOccurrences(of: "%i", with: String(index))] } ?? []
            var login = BenchLogin(clientID: id, username: password == nil ? nil : id, password: password, subscriptions: topics, qos: qos)
            login.cleanStart = !persistent
            return login
        }
    }
}

/// Prints a progress line each second until cancelled.
func reportProgress(_ stats: BenchStats, label: String) -> Task<Void, Never> {
    Task {
        var last = stats.snapshot
        let started = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            let now = stats.snapshot
            let seconds = (ContinuousClock.now - started).components.seconds
            let line =
                "\(label) t=\(seconds)s connected=\(now.connected) failed=\(now.failed) sent=\(now.sent) (\(now.sent - last.sent)/s)"
                + " received=\(now.received) (\(now.received - last.received)/s) p99=\(Double(now.latencyP99Micros) / 1000)ms\n"
            FileHandle.standardError.write(Data(line.utf8))
            last = now
        }
    }
}

func printSummary(_ fields: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

extension BenchStats.Snapshot {
    var fields: [String: Any] {
        [
            "connected": connected, "failed": failed, "sent": sent, "received": received, "unique": unique, "duplicates": duplicates,
            "p50Ms": Double(latencyP50Micros) / 1000, "p99Ms": Double(latencyP99Micros) / 1000, "maxMs": Double(latencyMaxMicros) / 1000,
        ]
    }
}

struct BenchConnect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conn", abstract: "Open terminals, report connects per second, and hold them.")

    @OptionGroup var terminals: BenchTerminals

    @Option(help: "Seconds to hold the connections open once all are up.")
    var hold = 0.0

    func run() async throws {
        let stats = BenchStats()
        let progress = reportProgress(stats, label: "conn")
        let connector = BenchConnector(target: terminals.target, stats: stats, group: MultiThreadedEventLoopGroup.singleton)
        let logins = terminals.logins
        let started = ContinuousClock.now
        let channels = await connector.open(logins, rate: terminals.connectRate, parallel: terminals.parallel)
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        var summary = stats.snapshot.fields
        summary["mode"] = "conn"
        summary["seconds"] = seconds
        summary["connectsPerSecond"] = Double(channels.count) / max(seconds, 1e-9)
        printSummary(summary)
        if hold > 0 { try? await Task.sleep(for: .milliseconds(Int(hold * 1000))) }
        progress.cancel()
        for channel in channels { channel.close() }
    }
}

struct BenchSubscribe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sub", abstract: "Open terminals that count and time what they receive.")

    @OptionGroup var terminals: BenchTerminals

    @Option(help: "Seconds to wait for messages at most.")
    var seconds = 60.0

    @Option(help: "Stop once this many distinct messages arrived in all (0: no limit).")
    var expect = 0

    @Option(help: "Stop this many seconds after the last message (once one arrived).")
    var idle = 5.0

    @Option(help: "Write this file once every terminal is connected (for scripts to wait on).")
    var readyFile: String?

    @Option(
        help:
            "Seconds to keep the terminals connected after the summary (their last acknowledgements go out while a script reads what the servers spent)."
    )
    var linger = 0.0

    func run() async throws {
        let stats = BenchStats()
        let progress = reportProgress(stats, label: "sub")
        let connector = BenchConnector(target: terminals.target, stats: stats, group: MultiThreadedEventLoopGroup.singleton)
        let started = ContinuousClock.now
        let channels = await connector.open(terminals.logins, rate: terminals.connectRate, parallel: terminals.parallel)
        if let readyFile { _ = FileManager.default.createFile(atPath: readyFile, contents: Data("\(channels.count)\n".utf8)) }
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var lastReceived = 0
        var lastChange = ContinuousClock.now
        var firstAt: ContinuousClock.Instant?
        var lastAt = ContinuousClock.now
        while ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
            let snapshot = stats.snapshot
            if snapshot.received != lastReceived {
                if firstAt == nil { firstAt = ContinuousClock.now }
                lastReceived = snapshot.received
                lastChange = ContinuousClock.now
                lastAt = lastChange
            }
            if expect > 0 && snapshot.unique >= expect { break }
            if firstAt != nil && ContinuousClock.now - lastChange > .milliseconds(Int(idle * 1000)) { break }
        }
        progress.cancel()
        let snapshot = stats.snapshot
        var summary = snapshot.fields
        let span = firstAt.map { lastAt - $0 } ?? .zero
        let spanSeconds = Double(span.components.seconds) + Double(span.components.attoseconds) / 1e18
        summary["mode"] = "sub"
        summary["seconds"] = spanSeconds
        summary["messagesPerSecond"] = spanSeconds > 0 ? Double(snapshot.unique) / spanSeconds : 0
        // From the first connection attempt to the last message (a backlog delivered on connect).
        let sinceStart = lastAt - started
        summary["sinceStartSeconds"] = Double(sinceStart.components.seconds) + Double(sinceStart.components.attoseconds) / 1e18
        printSummary(summary)
        if linger > 0 { try? await Task.sleep(for: .milliseconds(Int(linger * 1000))) }
        for channel in channels { channel.close() }
    }
}

struct BenchPublish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pub", abstract: "Offer load: through MQTT publishers, the control API's batch endpoint, or the Redis command stream.")

    @Option(help: "mqtt, api or stream.")
    var via = "mqtt"

    @Option(help: "Targets: terminals <target-prefix><i> (api, stream) or topics from --topic (mqtt).")
    var targets = 1000

    @Option(help: "Index of the first target.")
    var targetStart = 0

    @Option(help: "Terminal id prefix of the targets (api, stream).")
    var targetPrefix = "bench-"

    @Option(help: "Topic template for mqtt, %i = target index.")
    var topic = "bench/%i"

    @Option(help: "Messages per second in all (0: as fast as possible).")
    var rate = 0

    @Option(help: "Messages in all (0: until --seconds).")
    var messages = 0

    @Option(help: "Seconds at most.")
    var seconds = 10.0

    @Option(help: "Payload bytes (at least 16).")
    var size = 64

    @Option(help: "QoS of the messages.")
    var qos = 1

    @Option(help: "Push ttl in seconds (api, stream).")
    var ttl = 3600

    @Option(help: "MQTT server host (mqtt).")
    var host = "127.0.0.1"

    @Option(help: "MQTT server ports, comma separated (mqtt).")
    var port = "1883"

    @Option(help: "Publisher connections (mqtt).")
    var publishers = 4

    @Option(help: "Control API base URL (api).")
    var api = "http://127.0.0.1:8080"

    @Option(help: "Control API key (api).")
    var apiKey: String?

    @Option(help: "Messages per API request or per Redis pipeline (api, stream).")
    var batch = 200

    @Option(help: "API requests in flight (api).")
    var concurrency = 4

    @Option(help: "Push to this topic instead of to the target terminals (api).")
    var topicPush: String?

    @Flag(help: "Broadcast pushes to every terminal instead (api).")
    var broadcast = false

    @Option(help: "Redis URL (stream).")
    var redis = "redis://127.0.0.1:6379"

    @Option(help: "Command stream key (stream).")
    var stream = "pushfleet:push"

    func run() async throws {
        let stats = BenchStats()
        let progress = reportProgress(stats, label: "pub")
        let pace = BenchPace(rate: rate, messages: messages, seconds: seconds, size: max(size, BenchPayload.headerSize))
        let group = MultiThreadedEventLoopGroup.singleton
        let names = (targetStart..<targetStart + targets).map { "\(targetPrefix)\($0)" }
        let started = ContinuousClock.now
        let sent: Int
        switch via {
        case "mqtt":
            let connector = BenchConnector(
                target: BenchTarget(host: host, ports: port.split(separator: ",").compactMap { Int($0) }), stats: stats, group: group)
            let logins = (0..<publishers).map { BenchLogin(clientID: "bench-pub-\(getpid())-\($0)") }
            let channels = await connector.open(logins, rate: 0)
            let topics = (targetStart..<targetStart + targets).map { topic.replacingOccurrences(of: "%i", with: String($0)) }
            sent = await MQTTPublishLoad.run(
                publishers: channels, topics: topics, qos: MQTTQoS(rawValue: UInt8(clamping: qos)) ?? .atLeastOnce, pace: pace)
            for channel in channels { await channel.disconnect() }
        case "api":
            guard let url = URL(string: api), let apiHost = url.host else { throw ValidationError("--api must be a URL") }
            let load = APIPushLoad(
                host: apiHost, port: url.port ?? 80, apiKey: apiKey, terminals: names, qos: qos, ttl: ttl, batch: batch,
                concurrency: concurrency, topic: broadcast ? "*broadcast" : topicPush)
            sent = try await load.run(pace: pace, stats: stats, group: group)
        case "stream":
            let load = StreamPushLoad(
                redis: try RedisConfiguration(url: redis), stream: stream, terminals: names, qos: qos, ttl: ttl, batch: batch)
            sent = try await load.run(pace: pace, stats: stats, group: group)
        default:
            throw ValidationError("--via must be mqtt, api or stream")
        }
        progress.cancel()
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        printSummary(["mode": "pub", "via": via, "sent": sent, "seconds": seconds, "messagesPerSecond": Double(sent) / max(seconds, 1e-9)])
    }
}
