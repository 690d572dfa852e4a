import RedisClient

/// The Lua scripts that keep the Redis state consistent.
public enum FleetScripts {
    /// Registers a session and reads what it needs, atomically.
    ///
    /// KEYS: route, session, subscriptions, revoked, queue, sent.
    /// ARGV: node, epoch, connectedAt, cleanStart (0/1), issuedAt ("" skips the revocation
    /// check), queue read limit.
    /// Returns `{"revoked"}` or `{"ok", oldNode, oldEpoch, sessionPresent, subs, queue, sent}`.
    /// Reading the queue in the same script as writing the route closes the race with a
    /// control node that stores a message and then reads the route.
    public static let register = RedisScript(
        """
        local rev = redis.call('GET', KEYS[4])
        if rev and ARGV[5] ~= '' and tonumber(ARGV[5]) <= tonumber(rev) then return {'revoked'} end
        local old = redis.call('HMGET', KEYS[1], 'node', 'epoch')
        redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', ARGV[2], 'connectedAt', ARGV[3])
        local present = 0
        if ARGV[4] == '1' then
          redis.call('DEL', KEYS[2], KEYS[3])
        else
          present = redis.call('EXISTS', KEYS[2])
          redis.call('SET', KEYS[2], '1')
        end
        local subs = redis.call('HGETALL', KEYS[3])
        local queue = redis.call('LRANGE', KEYS[5], 0, tonumber(ARGV[6]) - 1)
        local sent = redis.call('SMEMBERS', KEYS[6])
        return {'ok', old[1] or '', old[2] or '', present, subs, queue, sent}
        """
    )

    /// Removes a route only if it still belongs to the connection that is ending.
    ///
    /// KEYS: route, session, subscriptions. ARGV: epoch, cleanStart (0/1).
    /// Returns 1 when the route was removed.
    public static let unregister = RedisScript(
        """
        if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[1])
        if ARGV[2] == '1' then redis.call('DEL', KEYS[2], KEYS[3]) end
        return 1
        """
    )

    /// Writes a live connection's route back after Redis lost it (restart without the data),
    /// unless another connection registered since.
    ///
    /// KEYS: route. ARGV: node, epoch, connectedAt. Returns 1 when written.
    public static let reassertRoute = RedisScript(
        """
        local epoch = redis.call('HGET', KEYS[1], 'epoch')
        if epoch and epoch ~= ARGV[2] then return 0 end
        redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', ARGV[2], 'connectedAt', ARGV[3])
        return 1
        """
    )

    /// Appends a message to a terminal's list, trims it to the cap and extends its expiry.
    ///
    /// KEYS: queue. ARGV: entry, cap, ttl in milliseconds, dedupe ("1": skip if the exact
    /// entry is already in the list, for a retried push).
    /// Returns the entries pushed out by the cap (oldest first).
    public static let enqueue = RedisScript(
        """
        if ARGV[4] == '1' and redis.call('LPOS', KEYS[1], ARGV[1]) then return {} end
        local n = redis.call('RPUSH', KEYS[1], ARGV[1])
        local cap = tonumber(ARGV[2])
        local dropped = {}
        if n > cap then dropped = redis.call('LPOP', KEYS[1], n - cap) end
        local ttl = tonumber(ARGV[3])
        if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
        return dropped
        """
    )

    /// Moves one terminal's state for a message forward and keeps the counts exact.
    ///
    /// KEYS: message status, message targets. ARGV: terminal, new state.
    /// `delivered` counts targets that were delivered (acknowledged ones included); `queued`
    /// counts those still waiting. Returns 1 when the state changed.
    public static let transition = RedisScript(
        """
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        local rank = {queued = 1, delivered = 2, acknowledged = 3, expired = 3, dropped = 3}
        local old = redis.call('HGET', KEYS[2], ARGV[1])
        local new = ARGV[2]
        if old and rank[old] >= rank[new] then return 0 end
        redis.call('HSET', KEYS[2], ARGV[1], new)
        if old == 'queued' then redis.call('HINCRBY', KEYS[1], 'queued', -1) end
        if new == 'acknowledged' and old ~= 'delivered' then redis.call('HINCRBY', KEYS[1], 'delivered', 1) end
        redis.call('HINCRBY', KEYS[1], new, 1)
        return 1
        """
    )

    /// Every script, for SCRIPT LOAD on connect.
    public static let all = [register, unregister, reassertRoute, enqueue, transition]
}
