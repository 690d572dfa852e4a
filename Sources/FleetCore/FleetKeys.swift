/// The Redis key and channel layout, shared by every node.
///
/// Everything about one terminal carries the hash tag `{t:<id>}`, so it lives in one Redis
/// Cluster slot and Lua scripts touching it stay single-slot; message statuses live in
/// buckets of their own (``statusBucket(_:)``). A push node's keys share `{n:<node>}`; the
/// stored-subscriber sets are spread over ``storedBuckets`` tags `{p:<bucket>}`, each with its
/// part of the stored owner's index; the retained messages and their byte count share
/// `{retained}` (one slot: their bounds are fleet-wide and exact).
public struct FleetKeys: Sendable, Hashable {
    /// Prefix of every key and channel (`pushfleet:` by default).
    public let prefix: String

    public init(prefix: String = "pushfleet:") {
        self.prefix = prefix
    }

    /// STRING `node|epoch|connectedAt` (``Route``): where the terminal is connected.
    public func route(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:route" }
    /// LIST of stored messages (JSON ``StoredMessage``), oldest first.
    public func queue(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:queue" }
    /// HASH collapse key -> the entry last stored with it in the terminal's list (see
    /// ``FleetScripts/storeCollapsing``); expires with the list.
    public func collapse(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:collapse" }
    /// HASH message id -> MQTT packet id of messages sent to the terminal and not yet
    /// acknowledged (redelivered with DUP, under the same packet id).
    public func sent(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:sent" }
    /// HASH topic filter -> QoS: the terminal's own MQTT subscriptions.
    public func subscriptions(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:subs" }
    /// STRING present while a persistent (clean session off) MQTT session exists.
    public func session(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:session" }
    /// SET of MQTT packet ids of QoS 2 PUBLISHes received from the terminal and awaiting PUBREL.
    public func released(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:rel" }
    /// SET of MQTT packet ids of QoS 2 messages to the terminal whose PUBREL was sent and whose
    /// PUBCOMP has not come (persistent sessions: PUBREL is sent again on reconnect).
    public func releasing(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:releasing" }
    /// STRING: the will (JSON ``StoredMessage``) of the terminal's last connection, kept while
    /// its delay runs (see ``wills``).
    public func will(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:will" }
    /// STRING unix time: credentials issued at or before it are refused.
    public func revoked(_ terminal: String) -> String { "\(prefix){t:\(terminal)}:revoked" }

    /// HASH describing a live push node; expires unless the node refreshes it.
    public func node(_ node: String) -> String { "\(prefix){n:\(node)}:node" }
    /// SET of node ids ever registered (entries whose ``node(_:)`` key expired are dead).
    public var nodes: String { "\(prefix)nodes" }
    /// HASH describing a live control node (its totals since it started, for `GET /v1/stats`);
    /// expires unless the node refreshes it.
    public func control(_ id: String) -> String { "\(prefix){c:\(id)}:control" }
    /// SET of control node ids seen (entries whose ``control(_:)`` key expired are gone).
    public var controls: String { "\(prefix)controls" }
    /// HASH: entries in terminals' lists by expiry bucket (``QueueLedger``), for the fleet's
    /// `queued` figure.
    public var queuedLedger: String { "\(prefix){stats}:queued" }
    /// ZSET scheduled push id -> when it is due (unix ms); a control node that takes one moves
    /// it a lease ahead until it is pushed (``ScheduledPushes``).
    public var scheduledDue: String { "\(prefix){sched}:due" }
    /// HASH scheduled push id -> the push (JSON), until it is pushed or cancelled.
    public var scheduledPushes: String { "\(prefix){sched}:pushes" }
    /// STREAM of delivery state changes when nodes run with `--status-events`: an entry per
    /// status write, its events in the field `events` (``StatusEvent``); capped.
    public var statusEvents: String { "\(prefix)events" }
    /// Pub/sub channel of one push node.
    public func nodeChannel(_ node: String) -> String { "\(prefix)node:\(node):ch" }
    /// Pub/sub channel every push node subscribes to (broadcasts and topic pushes).
    public var broadcastChannel: String { "\(prefix)broadcast" }

    /// SET of the topic filters a push node's sessions have subscriptions for: its part of the
    /// fleet's routing table for terminal publishes.
    public func index(_ node: String) -> String { "\(prefix){n:\(node)}:index" }
    /// SET of the topic filters of one bucket (``storedBucket(_:)``) that persistent sessions
    /// subscribe to: together, the index of ``SubscriptionIndex/storedOwner``.
    public func storedIndex(_ bucket: Int) -> String { "\(prefix){p:\(bucket)}:index" }
    /// Buckets of the stored-subscriber sets: their load grows with the fleet, so in Redis
    /// Cluster they spread over as many slots.
    public static let storedBuckets = 16
    /// The bucket of a topic filter's stored-subscriber set (FNV-1a of the filter).
    public static func storedBucket(_ filter: String) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in filter.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash % UInt32(storedBuckets))
    }
    /// Pub/sub channel announcing changes to the ``index(_:)`` sets (JSON ``IndexChange``).
    public var indexChannel: String { "\(prefix)index" }
    /// SET of terminals with a persistent session subscribed to `filter`: their messages are
    /// stored while they are away.
    public func storedSubscribers(_ filter: String) -> String { "\(prefix){p:\(Self.storedBucket(filter))}:psubs:\(filter)" }
    /// ZSET terminal -> when its delayed will is due (unix milliseconds, Redis's clock).
    public var wills: String { "\(prefix)wills" }
    /// HASH topic -> retained message (JSON ``StoredMessage``).
    public var retained: String { "\(prefix){retained}" }
    /// STRING: the bytes of the entries in ``retained``, kept by ``FleetScripts/retain``.
    public var retainedBytes: String { "\(prefix){retained}:bytes" }

    /// STRING mapping an API idempotency key to the message id it created.
    public func idempotency(_ key: String) -> String { "\(prefix)idem:\(key)" }

    /// STREAM of push commands anyone can XADD to.
    public var commandStream: String { "\(prefix)push" }
    /// Consumer group of the control nodes on ``commandStream``.
    public var commandGroup: String { "control" }
    /// Consumer group of the control nodes posting ``statusEvents`` to the status webhook.
    public var webhookGroup: String { "webhook" }
}
