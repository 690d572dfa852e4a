import FleetCore
import FleetRedis
import NIOCore
import RedisClient

/// Session registrations of one tick of the Redis connection's event loop, sent to Redis in one
/// call of ``FleetScripts/register``: a reconnect storm's terminals share a script call and
/// its reply (one promise per batch, not a chain per connection), and Redis runs one call's
/// setup for all of them. Each registration is still atomic on its own, and one terminal's
/// failure (a key of the wrong type) is its own.
///
/// In Redis Cluster a script's keys must share a slot, so there a tick's registrations go in one
/// call per slot (one pipeline still: the client groups the calls per master).
final class RegistrationBatcher: Sendable {
    private struct Pending {
        var registration: FleetScripts.Registration
        var promise: EventLoopPromise<SessionRegistration>
    }

    /// The most registrations in one script call: a longer call would hold Redis (which runs
    /// one script at a time) for longer than a few hundred microseconds.
    static let maximumBatch = 64

    private let redis: RedisConnection
    private let keys: FleetKeys
    private let nodeID: String
    /// Registrations waiting for the end of the current tick, confined to `redis.eventLoop`.
    private let pending: NIOLoopBoundBox<[Pending]>

    init(redis: RedisConnection, keys: FleetKeys, nodeID: String) {
        self.redis = redis
        self.keys = keys
        self.nodeID = nodeID
        self.pending = NIOLoopBoundBox.makeBoxSendingValue([], eventLoop: redis.eventLoop)
    }

    /// Registers a session; the future completes on `loop`.
    func register(_ registration: FleetScripts.Registration, on loop: any EventLoop) -> EventLoopFuture<SessionRegistration> {
        let promise = loop.makePromise(of: SessionRegistration.self)
        redis.eventLoop.execute { self.add(Pending(registration: registration, promise: promise)) }
        return promise.futureResult
    }

    private func add(_ registration: Pending) {
        pending.value.append(registration)
        if pending.value.count == 1 {
            // Registrations that arrive before this runs (from this tick and from the other
            // event loops' hops queued behind it) go in the same call.
            redis.eventLoop.execute { self.send() }
        } else if pending.value.count >= Self.maximumBatch {
            send()
        }
    }

    private func send() {
        let batch = pending.value
        guard !batch.isEmpty else { return }
        pending.value = []
        let groups = redis.isCluster ? Self.perSlot(batch, keys: keys) : [batch]
        let commands = groups.map { FleetScripts.registerCommand($0.map(\.registration), node: nodeID, keys: keys) }
        redis.pipelineFuture(commands).whenComplete { result in
            switch result {
            case .success(let replies):
                for (group, reply) in zip(groups, replies) { Self.complete(group, with: reply) }
            case .failure(let error):
                for pending in batch { pending.promise.fail(error) }
            }
        }
    }

    /// The registrations grouped by the slot of their terminal's keys, in order of first arrival.
    private static func perSlot(_ batch: [Pending], keys: FleetKeys) -> [[Pending]] {
        var groups: [[Pending]] = []
        var groupOfSlot: [Int: Int] = [:]
        for pending in batch {
            let slot = RedisClusterSlots.slot(of: keys.route(pending.registration.terminal))
            if let index = groupOfSlot[slot] {
                groups[index].append(pending)
            } else {
                groupOfSlot[slot] = groups.count
                groups.append([pending])
            }
        }
        return groups
    }

    private static func complete(_ batch: [Pending], with reply: RedisReply) {
        guard let each = reply.array, each.count == batch.count else {
            let failure: any Error
            do {
                _ = try reply.throwingError()
                failure = SessionRegistration.Failure.unexpectedReply(reply)
            } catch {
                failure = error
            }
            for pending in batch { pending.promise.fail(failure) }
            return
        }
        for (pending, reply) in zip(batch, each) {
            pending.promise.completeWith(Result { () throws(SessionRegistration.Failure) in try SessionRegistration(reply: reply) })
        }
    }
}
