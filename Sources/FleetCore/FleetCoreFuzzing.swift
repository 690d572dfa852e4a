/// Entry point for coverage-guided fuzzing (`Fuzz/`, `scripts/fuzz`) and the tests that replay
/// its corpus: the JSON the nodes read from Redis (stored entries, node channel events, index
/// changes, status event entries), which anyone with access to Redis can write. Returns the ways a decoder broke its
/// contract (empty: none). Not for other use.
public enum FleetCoreFuzzing {
    /// The first byte picks the decoder, the rest is its input. A decoded entry or event must
    /// encode and decode to itself.
    public static func redisJSON(_ input: [UInt8]) -> [String] {
        guard let kind = input.first else { return [] }
        let bytes = Array(input.dropFirst())
        switch kind % 4 {
        case 0:
            guard let message = StoredMessage.decode(String(decoding: bytes, as: UTF8.self)) else { return [] }
            let again = StoredMessage.decode(message.encoded())
            return again == message ? [] : ["stored entry round trip: \(message) -> \(String(describing: again))"]
        case 1:
            guard let event = NodeEvent.decode(bytes) else { return [] }
            let again = NodeEvent.decode(Array(event.encoded().utf8))
            return again == event ? [] : ["node event round trip: \(event) -> \(String(describing: again))"]
        case 2:
            _ = IndexChange.decode(bytes)
            return []
        default:
            guard let events = StatusEvent.decode(String(decoding: bytes, as: UTF8.self)) else { return [] }
            let again = StatusEvent.decode(StatusEvent.encode(events))
            return again == events ? [] : ["status event entry round trip: \(events) -> \(String(describing: again))"]
        }
    }
}
