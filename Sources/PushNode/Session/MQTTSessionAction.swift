import FleetCore
import Logging
import MQTTCodec
import NIOCore

/// What a session asks its connection to do. Actions that lead to a reply name the event that
/// carries it back.
///
/// The cases a message's path takes (write, flush, store, recordState, readStored) are held
/// inline; the rare large ones are boxed (`indirect`), so an event's actions stay small to
/// build and copy.
enum MQTTSessionAction {
    /// Write a packet to the terminal (not flushed).
    case write(MQTTPacket)
    /// Flush what was written (at the end of the socket read being handled, if one is).
    case flush
    case close
    /// Encode and decode packets in `version` from now on (CONNECT decided it).
    case useVersion(MQTTProtocolVersion)
    /// Pause or resume reading from the terminal's socket.
    case setReading(Bool)
    case schedule(SessionTimer, TimeAmount)
    case cancel(SessionTimer)
    /// Check the keep alive (the event loop's sweeper calls `keepAliveExpired(at:)`).
    case watchKeepAlive

    /// Ask the node's connect rate limiter: `admitted()` now or after a delay, or `throttled()`.
    case admit
    /// Run the register script; answered by `registered(_:)`.
    indirect case register(SessionRegisterRequest)
    /// Make this connection the one the node finds for its terminal; answered by
    /// `handleClaimed(previousHere:missedWake:)`.
    case claimHandle
    /// Stop the terminal's previous connection on this node; answered by
    /// `predecessorStopped(successor:)` once it stopped.
    case stopLocalPredecessor(successor: String)
    /// Tell the previous connection's node to stop it; answered by `kickAnswered(listeners:)`.
    indirect case kick(node: String, NodeEvent)
    /// Read what the stopped predecessor left; answered by `reloaded(_:)`.
    indirect case reload(SessionRegistration, window: Int)
    /// Read stored entries; answered by `storedRead(_:_:)`.
    case readStored(StoredBacklog.Read)
    /// Write to Redis, no reply needed.
    case store([SessionWrite])
    /// Write to Redis, then `removalConfirmed(_:)` with `ids` (the messages the writes take
    /// out of the list).
    case storeRemoving([SessionWrite], ids: [String])
    /// Record new subscriptions, then `subscriptionsRecorded(_:failed:)` with `reply`.
    indirect case recordSubscriptions([SessionWrite], SubscribeReply)
    /// Read the retained messages for new subscriptions; answered by `retainedRead(_:for:)`.
    case readRetained([RetainedRequest])
    /// The terminal's state for a tracked message (batched into the message's status).
    case recordState(messageID: String, MessageState)
    /// A broadcast reached one more terminal.
    case countReach(messageID: String)
    /// Route a terminal's publish through the fleet; answered by `routed(packetID:_:)`.
    indirect case route(StoredMessage, packetID: UInt16?)
    /// Remove the route if it is still `epoch`'s and keep or end the session; on success
    /// with the route removed, `forgetStoredFilters` leave the stored-subscriber sets.
    case unregister(epoch: String, expiry: UInt32, forgetStoredFilters: [String])
    /// Publish the will now.
    indirect case publishWill(StoredMessage)
    /// Keep the will in Redis for `delay` seconds (``DelayedWills``).
    indirect case keepWill(StoredMessage, epoch: String, delay: Int)
}

/// Timers a session sets; `timerFired(_:)` says one went off.
enum SessionTimer: Hashable {
    /// CONNECT did not come in time.
    case connectDeadline
    /// The connect rate limiter's delay is over.
    case admission
    /// The previous connection did not confirm it stopped (`successor`: this connection's epoch).
    case takeover(successor: String)
    /// The drain's grace for in-flight acknowledgements is over.
    case drain
}

/// What the register script needs.
struct SessionRegisterRequest: Equatable {
    var epoch: String
    var connectedAt: Int64
    var cleanStart: Bool
    var issuedAt: String
    var readCount: Int
    var persistent: Bool
}

/// A SUBACK waiting for its subscriptions to be recorded, and the retained messages to send
/// after it.
struct SubscribeReply {
    var suback: MQTTPacket
    var retained: [RetainedRequest]
}

/// A new subscription that gets the retained messages matching its filter.
struct RetainedRequest {
    var filter: String
    var subscription: Subscription
}

/// How a terminal's publish fared in the fleet.
enum RouteOutcome {
    case accepted
    /// Refused: the fleet's retained store is full.
    case retainedStoreFull(String)
    case failed(any Error)
}

/// Time as a session reads it; tests pass a manual clock.
protocol SessionClock: Sendable {
    /// Unix milliseconds (message expiry).
    var wallMillis: Int64 { get }
    /// Monotonic time (keep alive, the backlog's wake guard).
    var uptime: NIODeadline { get }
}

struct SystemSessionClock: SessionClock {
    var wallMillis: Int64 { FleetClock.nowMillis() }
    var uptime: NIODeadline { .now() }
}

/// What every session of a node shares: its rules, credentials, ACL, the node's index of
/// local subscriptions, metrics, logger and clock. One object per node.
final class SessionEnvironment: Sendable {
    let configuration: PushNodeConfiguration
    let credentials: CredentialAuthority
    let acl: TopicACL
    /// This node's sessions' subscriptions (in memory, shared by the node's sessions).
    let local: LocalSubscriptions
    let metrics: PushNodeMetrics
    let logger: Logger
    let clock: any SessionClock
    /// Makes connection epochs and client ids for empty ones.
    let newID: @Sendable () -> String

    init(
        configuration: PushNodeConfiguration, credentials: CredentialAuthority, acl: TopicACL, local: LocalSubscriptions,
        metrics: PushNodeMetrics, logger: Logger, clock: any SessionClock = SystemSessionClock(),
        newID: @escaping @Sendable () -> String = FleetClock.newEpoch
    ) {
        self.configuration = configuration
        self.credentials = credentials
        self.acl = acl
        self.local = local
        self.metrics = metrics
        self.logger = logger
        self.clock = clock
        self.newID = newID
    }
}
