import FleetCore
import FleetRedis
import Logging
import NIOCore
import RedisClient

/// Wills with a delay (MQTT 5 will delay interval) wait in Redis, not in the node that held
/// the connection: the entry in the terminal's `will` key and its due time in the fleet's
/// ``FleetKeys/wills`` set. So a node that dies does not lose them, and a client that
/// connects and drops in a loop costs the node no memory. Every push node sweeps the set;
/// a session that comes back (on any node) deletes its will when it registers.
struct DelayedWills: Sendable {
    let context: PushNodeContext
    /// How often a node looks for due wills.
    static let sweepInterval: Duration = .seconds(1)
    /// Wills claimed by one sweep step.
    static let claimBatch = 100
    /// How long a claimed will is this node's to publish before another node may take it.
    static let leaseMillis: Int64 = 30_000
    /// How long a kept will outlives its delay if no node is there to publish it.
    static let graceMillis: Int64 = 24 * 3600 * 1000

    var keys: FleetKeys { context.keys }

    /// Keeps `will` of the connection `epoch` of `terminal` in Redis, due in `delay` seconds.
    /// Beyond ``PushNodeConfiguration/maximumDelayedWills`` waiting in the fleet it is
    /// published now (it is a message the terminal handed over: it is not dropped).
    func keep(_ will: StoredMessage, terminal: String, epoch: String, delay: Int) {
        var kept = will
        // The will's own expiry counts from when it is published.
        if kept.expiresAt > 0 { kept.expiresAt += Int64(delay) * 1000 }
        let entry = kept.encoded()
        let delayMillis = Int64(delay) * 1000
        let commands = [
            FleetScripts.keepWill.command(
                keys: [keys.route(terminal), keys.will(terminal)],
                arguments: [epoch, entry, String(delayMillis + Self.graceMillis)]),
            FleetScripts.scheduleWill.command(
                keys: [keys.wills], arguments: [terminal, String(delayMillis), String(context.configuration.maximumDelayedWills)]),
        ]
        let context = self.context
        let keys = self.keys
        context.redis.pipelineFuture(commands).whenComplete { result in
            switch result {
            case .success(let replies) where replies.count == 2:
                guard replies[0].int == 1 else { return }  // the session came back meanwhile
                guard replies[1].int == 1 else {
                    context.logger.warning(
                        "delayed wills at their bound: published without the delay",
                        metadata: ["terminal": "\(terminal)", "bound": "\(context.configuration.maximumDelayedWills)"])
                    context.metrics.willsUndelayed.increment()
                    context.redis.fireAndForget([
                        FleetScripts.deleteIfEqual.command(keys: [keys.will(terminal)], arguments: [entry])
                    ])
                    return Self.publish(will, context: context)
                }
                context.metrics.willsKept.increment()
            case .success, .failure:
                // Redis did not take it: publishing now beats losing it.
                context.logger.warning("could not keep a delayed will in Redis: published now", metadata: ["terminal": "\(terminal)"])
                Self.publish(will, context: context)
            }
        }
    }

    static func publish(_ will: StoredMessage, context: PushNodeContext) {
        route(will, context: context).whenSuccess { context.metrics.willsPublished.increment() }
    }

    /// Routes a will; one the fleet's retained bounds refuse goes out without RETAIN (it was
    /// accepted with its CONNECT, within the size bound, and is not dropped).
    static func route(_ will: StoredMessage, context: PushNodeContext) -> EventLoopFuture<Void> {
        context.route(will).flatMapError { error in
            guard error is TopicRouter.RetainedStoreFull else { return context.redis.eventLoop.makeFailedFuture(error) }
            context.logger.warning(
                "retained messages at their bound: a will published without RETAIN", metadata: ["topic": "\(will.topic)"])
            var unretained = will
            unretained.retain = nil
            return context.route(unretained)
        }
    }

    /// Publishes the wills that are due, until cancelled.
    func sweep() async {
        while !Task.isCancelled {
            do {
                while try await sweepOnce() == Self.claimBatch {}
            } catch {
                context.logger.debug("delayed will sweep failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: Self.sweepInterval)
        }
    }

    /// Claims and publishes one batch of due wills; returns how many were claimed.
    func sweepOnce() async throws -> Int {
        let claim = try await context.redis.pipeline([
            FleetScripts.claimWills.command(keys: [keys.wills], arguments: [String(Self.claimBatch), String(Self.leaseMillis)])
        ])
        let fields = try claim[0].throwingError().array?.compactMap(\.string) ?? []
        let claimed = stride(from: 0, to: fields.count - 1, by: 2).map { (terminal: fields[$0], lease: fields[$0 + 1]) }
        guard !claimed.isEmpty else { return 0 }
        let reads = try await context.redis.pipeline(
            claimed.flatMap { [RedisCommand("GET", keys.will($0.terminal)), RedisCommand("EXISTS", keys.route($0.terminal))] })
        var settle: [RedisCommand] = []
        for (offset, claim) in claimed.enumerated() {
            let entry = reads[offset * 2].string
            let connected = reads[offset * 2 + 1].int == 1
            if let entry, !connected {
                if let will = StoredMessage.decode(entry) {
                    // Published before its claim is settled: a node dying here leaves the lease
                    // to run out and the will to the next sweep (at least once).
                    try await Self.route(will, context: context).get()
                    context.metrics.willsPublished.increment()
                } else {
                    // Unreadable (written by hand?): settled like a published one, not claimed
                    // again at every lease.
                    context.logger.warning("dropping an unreadable delayed will", metadata: ["terminal": "\(claim.terminal)"])
                }
            }
            if let entry { settle.append(FleetScripts.deleteIfEqual.command(keys: [keys.will(claim.terminal)], arguments: [entry])) }
            settle.append(FleetScripts.settleWill.command(keys: [keys.wills], arguments: [claim.terminal, claim.lease]))
        }
        _ = try await context.redis.pipeline(settle)
        return claimed.count
    }
}
