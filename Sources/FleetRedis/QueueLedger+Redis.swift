import FleetCore
import RedisClient

extension QueueLedger {
    /// The counts since the last call as commands adding them to the fleet's ledger hash (one
    /// HINCRBY per bucket), and the counts, for ``restore(_:)`` when they are not written.
    public func takeCommands(keys: FleetKeys) -> (commands: [RedisCommand], taken: [Int64: Int64]) {
        let taken = take()
        let commands = taken.sorted { $0.key < $1.key }.map {
            RedisCommand("HINCRBY", keys.queuedLedger, String($0.key), String($0.value))
        }
        return (commands, taken)
    }
}
