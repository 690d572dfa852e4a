import NIOCore

/// How the router sends a command: as it is to its slot's master, split per slot (MGET, DEL,
/// EXISTS, UNLINK, TOUCH), or to every master (WAIT); and how the parts' replies become one.
extension RedisClusterRouter {
    /// How a command's parts' replies become its reply.
    enum Merge {
        case single
        /// MGET split per slot: for each key in order, its part and its place there.
        case values([(part: Int, offset: Int)])
        /// DEL, EXISTS, UNLINK, TOUCH: the parts' counts added.
        case sum
        /// WAIT: the fewest replicas any master reached.
        case minimum
    }

    /// Where a part of a command goes.
    struct Part {
        var command: RedisCommand
        /// nil: any master (a command without keys); `allMasters`: every one.
        var slot: Int?
        var allMasters = false
    }

    /// How `command` is sent: as itself, split per slot, or to every master; nil when its keys
    /// span slots and it cannot be split.
    static func plan(_ command: RedisCommand) -> (Merge, [Part])? {
        let positions = command.keyPositions
        if case .one(let index) = positions {
            return (.single, [Part(command: command, slot: RedisClusterSlots.slot(of: command.argument(index)))])
        }
        let keys = command.keys
        if keys.isEmpty {
            switch command.name.uppercased() {
            case "WAIT":
                return (.minimum, [Part(command: command, slot: nil, allMasters: true)])
            case "PUBLISH":
                // Any master forwards it to the whole cluster, but counts only its own
                // subscribers: sent to the master of the channel's slot, where
                // ``RedisSubscriber`` subscribes, its count is the fleet's.
                let arguments = command.arguments
                return (.single, [Part(command: command, slot: arguments.count > 1 ? RedisClusterSlots.slot(of: arguments[1]) : nil)])
            default:
                return (.single, [Part(command: command, slot: nil)])
            }
        }
        let slots = keys.map { RedisClusterSlots.slot(of: $0) }
        if slots.allSatisfy({ $0 == slots[0] }) { return (.single, [Part(command: command, slot: slots[0])]) }
        let name = command.name.uppercased()
        guard ["MGET", "DEL", "EXISTS", "UNLINK", "TOUCH"].contains(name) else { return nil }
        // Per slot, in order of first appearance, its keys; per key, its part and place there
        // (a dictionary: an MGET of 10,000 routes spans thousands of slots).
        var partOfSlot: [Int: Int] = [:]
        var slotOfPart: [Int] = []
        var keysOfPart: [[[UInt8]]] = []
        var places: [(part: Int, offset: Int)] = []
        places.reserveCapacity(keys.count)
        for (key, slot) in zip(keys, slots) {
            let part: Int
            if let existing = partOfSlot[slot] {
                part = existing
            } else {
                part = keysOfPart.count
                partOfSlot[slot] = part
                slotOfPart.append(slot)
                keysOfPart.append([])
            }
            places.append((part, keysOfPart[part].count))
            keysOfPart[part].append(key)
        }
        let parts = zip(slotOfPart, keysOfPart).map { slot, keys in Part(command: RedisCommand([Array(name.utf8)] + keys), slot: slot) }
        return (name == "MGET" ? .values(places) : .sum, parts)
    }

    static func merged(_ merge: Merge, _ replies: [RedisReply]) -> RedisReply {
        switch merge {
        case .single:
            return replies.first ?? .null
        case .values(let places):
            if let error = replies.first(where: { if case .error = $0 { true } else { false } }) { return error }
            return .array(places.map { place in replies[place.part].array?[place.offset] ?? .null })
        case .sum:
            if let error = replies.first(where: { if case .error = $0 { true } else { false } }) { return error }
            return .integer(replies.reduce(0) { $0 + ($1.int ?? 0) })
        case .minimum:
            if let error = replies.first(where: { if case .error = $0 { true } else { false } }) { return error }
            return .integer(replies.map { $0.int ?? 0 }.min() ?? 0)
        }
    }
}
