import FleetCore
import RedisClient

/// The scripts behind delayed wills. A delayed will waits in Redis, not in a node: the entry
/// in the terminal's `will` key, its due time in the fleet's ``FleetKeys/wills`` sorted set.
/// Every push node sweeps the set; a claimed will is leased (its due time moved on), so a
/// node that dies while publishing one leaves it to the next sweep.
extension FleetScripts {
    /// Keeps the will of a connection that ended, unless another connection of the terminal
    /// registered since (its session came back: the will is not sent).
    ///
    /// KEYS: route, will. ARGV: the ended connection's epoch, entry, lifetime in milliseconds.
    /// Returns 1 when kept.
    public static let keepWill = RedisScript(
        """
        \(Route.luaReader)
        local _, epoch = route(KEYS[1])
        if epoch and epoch ~= ARGV[1] then return 0 end
        redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
        return 1
        """
    )

    /// Schedules a terminal's will `delay` milliseconds from now (Redis's clock), unless the
    /// set already holds `max` other terminals' wills.
    ///
    /// KEYS: wills. ARGV: terminal, delay in milliseconds, max. Returns 1 when scheduled.
    public static let scheduleWill = RedisScript(
        """
        if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
        return 1
        """
    )

    /// Claims up to `limit` wills that are due: each one's due time moves `lease` milliseconds
    /// on, so no other node takes it meanwhile and it comes back if this one dies.
    ///
    /// KEYS: wills. ARGV: limit, lease in milliseconds.
    /// Returns terminal, lease (the new due time, an integer string), terminal, lease, ...
    public static let claimWills = RedisScript(
        """
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
        local lease = now + tonumber(ARGV[2])
        local reply = {}
        for _, terminal in ipairs(due) do
          redis.call('ZADD', KEYS[1], lease, terminal)
          reply[#reply + 1] = terminal
          reply[#reply + 1] = string.format('%.0f', lease)
        end
        return reply
        """
    )

    /// Ends a claim: removes the terminal from the set unless it was scheduled again since
    /// (its due time is no longer the lease).
    ///
    /// KEYS: wills. ARGV: terminal, lease. Returns 1 when removed.
    public static let settleWill = RedisScript(
        """
        local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
        if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
        return redis.call('ZREM', KEYS[1], ARGV[1])
        """
    )

    /// Deletes a key only if it still holds `value` (a will published, unless a newer one
    /// replaced it).
    ///
    /// KEYS: key. ARGV: value. Returns 1 when deleted.
    public static let deleteIfEqual = RedisScript(
        """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        return redis.call('DEL', KEYS[1])
        """
    )
}
