import NIOCore

/// Where one session stands in its terminal's stored list (Redis, oldest first), so that the
/// list drains in order whatever its length and however fast entries arrive.
///
/// The session keeps the ids of the entries at the head of the list it has handled and that
/// stay there (sent and waiting for an acknowledgement, or waiting for a subscription): the
/// `ahead` prefix. Entries it is done with (acknowledged, expired, sent at QoS 0) leave the
/// prefix when their LREM is issued. Every read goes out on the node's one Redis connection
/// after those LREMs, so the list as Redis reads it starts with exactly `ahead`, and the next
/// unhandled entries start at index `ahead.count`. Each read fetches the last entry of the
/// prefix too (the anchor) and checks it: when something else changed the list's head (the
/// cap trimmed it, another connection of the terminal removed an entry, entries were appended
/// in another order than the session saw them), the next read starts from the head again and
/// rebuilds the prefix (a rescan).
///
/// Pure value type: events in, reads out. The connection handler issues the reads.
struct StoredBacklog {
    /// One list read: `LRANGE key start (start + count - 1)`.
    struct Read: Equatable {
        var start: Int
        var count: Int
        /// The id expected at `start` (the last entry of the prefix), or nil when the read
        /// starts at the head.
        var anchor: String?
        /// The read also fetches the `sent` hash (message id -> packet id of earlier
        /// deliveries): a new session, or one whose earlier connection just stopped.
        var withSent: Bool
    }

    /// What a completed read holds for the session.
    enum Outcome: Equatable {
        /// Entries `range` of the reply are to be handled, in order (through ``handled(_:)``).
        case entries(Range<Int>)
        /// The list's head was not as expected: nothing to handle, read again (a rescan).
        case mismatch
    }

    /// Ids of the list's first entries, handled and staying in the list, in list order.
    private(set) var ahead: [String] = []
    /// A read is under way (its ``Read`` travels with the reply).
    private(set) var isReading = false
    /// The list's end was reached and nothing new was announced since.
    private(set) var caughtUp = false
    /// New entries were announced while a read was under way.
    private var wokenWhileReading = false
    /// The next read starts at the head and rebuilds `ahead`.
    private var rescan = false
    /// The next read fetches the `sent` hash.
    private var needsSent = true
    /// Earlier deliveries not yet acknowledged: message id -> packet id (sent again with DUP).
    private(set) var redeliveries: [String: UInt16] = [:]
    /// When the last read that returned entries completed. Entries such a read returned may
    /// still be announced by a wake event that is on its way; until it has surely arrived,
    /// wake events are answered with a read rather than delivered from the event.
    private var lastFruitfulRead: NIODeadline?
    /// How long after such a read a wake event's entries are not trusted.
    static let wakeGuard = TimeAmount.seconds(2)

    /// The read to issue now, if any: when entries may be waiting, none is under way and the
    /// window has room for at least half of it (or for all of it when it is 1): reads
    /// come in batches, not one per acknowledgement.
    mutating func nextRead(room: Int, window: Int) -> Read? {
        guard !isReading, !caughtUp, room > 0, room >= max(1, window / 2) else { return nil }
        let read: Read
        if rescan || ahead.isEmpty {
            read = Read(start: 0, count: ahead.count + room, anchor: nil, withSent: needsSent)
        } else {
            read = Read(start: ahead.count - 1, count: room + 1, anchor: ahead.last, withSent: needsSent)
        }
        isReading = true
        wokenWhileReading = false
        return read
    }

    /// A read completed with the entries' ids (nil for an unreadable entry) and, when it asked
    /// for it, the `sent` hash.
    mutating func readCompleted(_ read: Read, ids: [String?], sent: [String: UInt16]?, now: NIODeadline) -> Outcome {
        isReading = false
        if let sent { redeliveries = sent }
        needsSent = needsSent && sent == nil
        let fresh: Range<Int>
        if let anchor = read.anchor {
            guard ids.first == anchor else { return mismatch() }
            fresh = 1..<ids.count
            for index in fresh {
                // An entry handled already, behind the anchor: the prefix is not what it seems.
                if let id = ids[index], ahead.contains(id) { return mismatch() }
            }
        } else {
            // From the head: the prefix is rebuilt from what the list holds.
            ahead = []
            rescan = false
            fresh = 0..<ids.count
        }
        // A short read reached the end of the list: earlier deliveries of entries no longer in
        // it are of no use.
        caughtUp = ids.count < read.count && !wokenWhileReading
        if caughtUp && !redeliveries.isEmpty {
            let listed = Set(ids.compactMap { $0 }).union(ahead)
            redeliveries = redeliveries.filter { listed.contains($0.key) }
        }
        if !fresh.isEmpty { lastFruitfulRead = now }
        return .entries(fresh)
    }

    /// The read failed (Redis unavailable): read again when woken.
    mutating func readFailed() {
        isReading = false
        caughtUp = false
    }

    private mutating func mismatch() -> Outcome {
        rescan = true
        caughtUp = false
        return .mismatch
    }

    /// An entry of the list was handled and stays in it (sent at QoS 1/2 and waiting for its
    /// acknowledgement, or kept for a subscription the session lacks).
    mutating func handled(_ id: String) {
        ahead.append(id)
    }

    /// Handling stopped before the end of a read (window full, socket not writable): the
    /// rest is read again.
    mutating func stopped() {
        caughtUp = false
    }

    /// An entry's LREM was issued (acknowledged, expired, sent at QoS 0).
    mutating func removed(_ id: String) {
        if let index = ahead.lastIndex(of: id) { ahead.remove(at: index) }
        redeliveries[id] = nil
    }

    /// The packet id an earlier connection used for `id`, if it sent it (redelivery with DUP).
    mutating func takeRedelivery(_ id: String) -> UInt16? {
        redeliveries.removeValue(forKey: id)
    }

    /// New entries were stored (a wake event without them, or the node's subscription
    /// renewed): read.
    mutating func woken() {
        caughtUp = false
        if isReading { wokenWhileReading = true }
    }

    /// A wake event carries the new entries themselves. Returns true when the session may
    /// deliver them straight from the event: it has handled everything before them, no read
    /// is under way, and no recent read could have returned them already. Otherwise it reads.
    mutating func mayDeliverFromWake(now: NIODeadline) -> Bool {
        guard caughtUp, !rescan, !isReading else {
            woken()
            return false
        }
        if let lastFruitfulRead, now < lastFruitfulRead + Self.wakeGuard {
            woken()
            return false
        }
        lastFruitfulRead = nil
        return true
    }

    /// Subscriptions changed: entries kept for a subscription the session lacked may now be
    /// deliverable, so the list is read from its head again.
    mutating func subscriptionsChanged() {
        guard !ahead.isEmpty else { return }
        rescan = true
        caughtUp = false
    }
}
