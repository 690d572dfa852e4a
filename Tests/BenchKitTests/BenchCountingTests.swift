import BenchKit
import FleetCore
import FleetTestSupport
import Logging
import MQTTCodec
import NIOPosix
import PushNode
import ServiceLifecycle
import Testing

/// The load tool's own counting: payload stamps, duplicates, lost and latency, against a real
/// push node (anonymous) on a real redis-server.
@Suite(.serialized)
struct BenchCountingTests {
    @Test func payloadCarriesSendTimeAndSequence() {
        let payload = BenchPayload(sentAtNanos: 0x0102_0304_0506_0708, sequence: 42)
        let bytes = payload.encoded(size: 40)
        #expect(bytes.count == 40)
        #expect(BenchPayload(decoding: bytes) == payload)
        #expect(BenchPayload(decoding: bytes.prefix(15)) == nil)
        #expect(payload.encoded().count == BenchPayload.headerSize)
    }

    @Test func statsTellDuplicatesAndForeignMessagesApart() {
        let stats = BenchStats()
        var tracker = SequenceTracker()
        for sequence: UInt64 in [0, 1, 1, 2, 0] {
            stats.received(latencyNanos: 2_000_000, duplicate: tracker.isDuplicate(sequence))
        }
        stats.received(latencyNanos: nil, duplicate: false)
        let snapshot = stats.snapshot
        #expect(snapshot.received == 6)
        #expect(snapshot.unique == 3)
        #expect(snapshot.duplicates == 2)
        #expect(snapshot.foreign == 1)
        #expect((1990...2010).contains(snapshot.latencyP99Micros))
    }

    @Test func countsEveryMessageOnceThroughAPushNodeAndDuplicatesWhenSentAgain() async throws {
        let redis = try RedisServer()
        var configuration = PushNodeConfiguration(
            redis: redis.configuration, mqttHost: "127.0.0.1", mqttPort: 0, nodeID: "bench-test", secret: "s")
        configuration.allowAnonymous = true
        let node = PushNode(configuration: configuration, logger: Logger(label: "test"))
        let group = ServiceGroup(services: [node], logger: Logger(label: "test"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            while node.mqttPort == nil { try await Task.sleep(for: .milliseconds(20)) }
            let port = node.mqttPort!
            let received = BenchStats()
            let connector = BenchConnector(
                target: BenchTarget(host: "127.0.0.1", ports: [port]), stats: received, group: MultiThreadedEventLoopGroup.singleton)
            let subscribers = await connector.open(
                (0..<20).map { BenchLogin(clientID: "sub-\($0)", subscriptions: ["bench/\($0)"], qos: .atLeastOnce) }, rate: 0)
            #expect(subscribers.count == 20)

            let sent = BenchStats()
            let publishers = await BenchConnector(
                target: BenchTarget(host: "127.0.0.1", ports: [port]), stats: sent, group: MultiThreadedEventLoopGroup.singleton
            ).open([BenchLogin(clientID: "pub-1"), BenchLogin(clientID: "pub-2")], rate: 0)
            let topics = (0..<20).map { "bench/\($0)" }
            let pace = BenchPace(rate: 0, messages: 200, seconds: 10, size: 32)
            #expect(await MQTTPublishLoad.run(publishers: publishers, topics: topics, qos: .atLeastOnce, pace: pace) == 200)
            try await waitUntil { received.snapshot.unique == 200 }
            var snapshot = received.snapshot
            #expect(snapshot.duplicates == 0)
            #expect(sent.snapshot.sent - snapshot.unique == 0)  // lost
            #expect(snapshot.latencyP50Micros > 0 && snapshot.latencyP50Micros <= snapshot.latencyP99Micros)
            #expect(snapshot.latencyP99Micros <= snapshot.latencyMaxMicros)

            // The same sequence numbers again: every one is a duplicate, none is new.
            #expect(await MQTTPublishLoad.run(publishers: publishers, topics: topics, qos: .atLeastOnce, pace: pace) == 200)
            try await waitUntil { received.snapshot.duplicates == 200 }
            snapshot = received.snapshot
            #expect(snapshot.unique == 200)
            #expect(snapshot.received == 400)

            for channel in subscribers + publishers { channel.close() }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    func waitUntil(_ condition: @escaping () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("timed out")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
