import RedisClient

/// Removes the consumers of a stream's consumer group that hold nothing and have not read for
/// a long time: the control nodes that were restarted (each run is a consumer of its own,
/// named after its process by default) would otherwise stay listed in the group for ever.
/// A consumer with pending entries is left to be claimed from (XAUTOCLAIM) and never removed:
/// the check and the removal are one script, so a consumer that reads in between keeps what
/// it read.
extension FleetScripts {
    /// How long a consumer must have been idle to be removed: far longer than any live
    /// consumer (they read every second or so) goes without reading.
    public static let idleConsumerMillis: Int64 = 3_600_000
    /// How often a consumer of a group looks for idle consumers to remove.
    public static let idleConsumerCheckInterval = Duration.seconds(600)

    /// KEYS: stream. ARGV: group, the consumer to keep (the caller), idle milliseconds.
    /// Returns the names removed.
    public static let removeIdleConsumers = RedisScript(
        """
        local removed = {}
        for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
          local fields = {}
          for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
          if fields['name'] ~= ARGV[2] and fields['pending'] == 0 and fields['idle'] > tonumber(ARGV[3]) then
            redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
            removed[#removed + 1] = fields['name']
          end
        end
        return removed
        """
    )

    /// Removes `group`'s consumers on `stream` idle over `idleMillis` with nothing pending,
    /// but `keeping`; returns their names.
    @discardableResult
    public static func removeIdleConsumers(
        redis: RedisConnection, stream: String, group: String, keeping: String, idleMillis: Int64 = idleConsumerMillis
    ) async throws -> [String] {
        let reply = try await redis.send(removeIdleConsumers.command(keys: [stream], arguments: [group, keeping, String(idleMillis)]))
        return (try reply.throwingError().array ?? []).compactMap(\.string)
    }
}
