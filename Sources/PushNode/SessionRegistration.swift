import FleetCore
import FleetRedis
import RedisClient

/// What a session needs from Redis when it starts, decoded once from the ``FleetScripts/register``
/// reply (and refreshed by ``RedisSessionStore/reload(_:window:)`` after a takeover).
struct SessionRegistration {
    /// The node and epoch of the terminal's previous connection ("" when there was none).
    var oldNode: String
    var oldEpoch: String
    /// A session existed before this connection (before a clean start discarded it).
    var sessionExisted: Bool
    /// Stored subscriptions: filter -> encoded ``Subscription``.
    var subscriptions: [String: String]
    /// The head of the stored list (as many entries as the registration read asked for).
    var queue: [String]
    /// Earlier deliveries not acknowledged: message id -> packet id.
    var sent: [String: UInt16]
    /// Filters of the session a clean start discarded.
    var discardedFilters: [String]
    /// QoS 2 packet ids received from the terminal and awaiting PUBREL.
    var released: [UInt16]
    /// QoS 2 packet ids sent PUBREL and awaiting PUBCOMP.
    var releasing: [UInt16]

    enum Failure: Error {
        /// The credential was issued before the terminal's revocation.
        case revoked
        /// Redis could not register this terminal (its keys could not be used).
        case failed(String)
        case unexpectedReply(RedisReply)
    }

    init(
        oldNode: String = "", oldEpoch: String = "", sessionExisted: Bool = false, subscriptions: [String: String] = [:],
        queue: [String] = [], sent: [String: UInt16] = [:], discardedFilters: [String] = [], released: [UInt16] = [],
        releasing: [UInt16] = []
    ) {
        self.oldNode = oldNode
        self.oldEpoch = oldEpoch
        self.sessionExisted = sessionExisted
        self.subscriptions = subscriptions
        self.queue = queue
        self.sent = sent
        self.discardedFilters = discardedFilters
        self.released = released
        self.releasing = releasing
    }

    /// Decodes the register script's reply for one terminal.
    init(reply: RedisReply) throws(Failure) {
        guard let array = reply.array, let status = array.first?.string else { throw .unexpectedReply(reply) }
        switch status {
        case "ok": break
        case "revoked": throw .revoked
        case "error": throw .failed(array.dropFirst().first?.string ?? "")
        default: throw .unexpectedReply(reply)
        }
        guard array.count == 10 else { throw .unexpectedReply(reply) }
        oldNode = array[1].string ?? ""
        oldEpoch = array[2].string ?? ""
        sessionExisted = array[3].int == 1
        subscriptions = array[4].pairs ?? [:]
        queue = array[5].array?.compactMap(\.string) ?? []
        sent = Self.packetIDs(array[6])
        discardedFilters = array[7].array?.compactMap(\.string) ?? []
        released = Self.packetIDList(array[8])
        releasing = Self.packetIDList(array[9])
    }

    /// Applies the replies to ``RedisSessionStore/reload(_:window:)``'s reads.
    /// Throws when Redis did not answer every read.
    mutating func reload(_ replies: [RedisReply]) throws(Failure) {
        guard replies.count == 5 else { throw .unexpectedReply(.array(replies)) }
        if let failed = replies.first(where: \.isError) { throw .unexpectedReply(failed) }
        subscriptions = replies[0].pairs ?? [:]
        queue = replies[1].array?.compactMap(\.string) ?? []
        sent = Self.packetIDs(replies[2])
        released = Self.packetIDList(replies[3])
        releasing = Self.packetIDList(replies[4])
    }

    /// The `sent` hash (message id -> packet id) from a HGETALL reply.
    static func packetIDs(_ reply: RedisReply) -> [String: UInt16] {
        (reply.pairs ?? [:]).compactMapValues { UInt16($0) }
    }

    private static func packetIDList(_ reply: RedisReply) -> [UInt16] {
        reply.array?.compactMap { $0.string.flatMap(UInt16.init) } ?? []
    }
}
