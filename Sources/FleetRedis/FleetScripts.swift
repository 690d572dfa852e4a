import FleetCore
import RedisClient

/// The Lua scripts that keep the Redis state consistent.
public enum FleetScripts {
    /// Registers sessions and reads what each needs: one call for the registrations of a tick
    /// (``registerCommand(_:node:keys:)`` builds it), each terminal's atomically.
    ///
    /// Per terminal, 9 KEYS: route, session, subscriptions, revoked, queue, sent, released,
    /// releasing, will. ARGV: node, the entry field that marks messages stored for a
    /// subscription (``StoredMessage/sessionField``), then per terminal 6: epoch, connectedAt,
    /// cleanStart (0/1), issuedAt ("" skips the revocation check), queue read limit, persistent
    /// (0/1: the session outlives the connection).
    /// Returns one reply per terminal, in order: `{"revoked"}`, `{"error", message}` (that
    /// terminal's keys could not be used; the others are unaffected), or `{"ok", oldNode,
    /// oldEpoch, sessionPresent, subs, queue, sent, discardedFilters, released, releasing}`.
    /// Reading the queue in the same script as writing the route closes the race with a
    /// control node that stores a message and then reads the route. A clean start discards the
    /// old session: its subscriptions (returned, so the node can leave the offline index) and
    /// the messages stored for them; pushes addressed to the terminal stay, and the list read
    /// that found the session's entries is also the head returned. A will kept for the
    /// terminal's previous connection is dropped: the session came back before its delay ended.
    public static let register = RedisScript(
        """
        \(Route.luaReader)
        local function register(k, a)
          local rev = redis.call('GET', KEYS[k + 4])
          if rev and ARGV[a + 4] ~= '' and tonumber(ARGV[a + 4]) <= tonumber(rev) then return {'revoked'} end
          local oldNode, oldEpoch = route(KEYS[k + 1])
          redis.call('SET', KEYS[k + 1], ARGV[1] .. '|' .. ARGV[a + 1] .. '|' .. ARGV[a + 2])
          redis.call('DEL', KEYS[k + 9])
          local persistent = ARGV[a + 6] == '1'
          local limit = tonumber(ARGV[a + 5])
          if ARGV[a + 3] == '1' then
            local discarded = redis.call('HKEYS', KEYS[k + 3])
            redis.call('DEL', KEYS[k + 2], KEYS[k + 3], KEYS[k + 7], KEYS[k + 8])
            if persistent then redis.call('SET', KEYS[k + 2], '1') end
            local queue = {}
            for _, entry in ipairs(redis.call('LRANGE', KEYS[k + 5], 0, -1)) do
              local ok, message = pcall(cjson.decode, entry)
              if ok and type(message) == 'table' and message[ARGV[2]] == true then
                redis.call('LREM', KEYS[k + 5], 1, entry)
              elseif #queue < limit then
                queue[#queue + 1] = entry
              end
            end
            return {'ok', oldNode or '', oldEpoch or '', 0, {}, queue, redis.call('HGETALL', KEYS[k + 6]), discarded, {}, {}}
          end
          local present = redis.call('EXISTS', KEYS[k + 2])
          if persistent then
            redis.call('SET', KEYS[k + 2], '1')
            redis.call('PERSIST', KEYS[k + 3])
            redis.call('PERSIST', KEYS[k + 7])
            redis.call('PERSIST', KEYS[k + 8])
          end
          return {'ok', oldNode or '', oldEpoch or '', present, redis.call('HGETALL', KEYS[k + 3]),
            redis.call('LRANGE', KEYS[k + 5], 0, limit - 1), redis.call('HGETALL', KEYS[k + 6]), {},
            redis.call('SMEMBERS', KEYS[k + 7]), redis.call('SMEMBERS', KEYS[k + 8])}
        end
        local replies = {}
        for i = 0, #KEYS / 9 - 1 do
          local ok, reply = pcall(register, i * 9, 2 + i * 6)
          if not ok then reply = {'error', type(reply) == 'table' and reply.err or tostring(reply)} end
          replies[#replies + 1] = reply
        end
        return replies
        """
    )

    /// One session registration, as ``registerCommand(_:node:keys:)`` sends it.
    public struct Registration: Sendable, Equatable {
        public var terminal: String
        /// The connection's epoch and when it connected (Unix milliseconds): its route.
        public var epoch: String
        public var connectedAt: Int64
        public var cleanStart: Bool
        /// When the credential was issued (Unix seconds; "" skips the revocation check).
        public var issuedAt: String
        /// How many entries of the stored list to read.
        public var readCount: Int
        /// The session outlives the connection.
        public var persistent: Bool

        public init(
            terminal: String, epoch: String, connectedAt: Int64, cleanStart: Bool, issuedAt: String, readCount: Int, persistent: Bool
        ) {
            self.terminal = terminal
            self.epoch = epoch
            self.connectedAt = connectedAt
            self.cleanStart = cleanStart
            self.issuedAt = issuedAt
            self.readCount = readCount
            self.persistent = persistent
        }
    }

    /// Registers terminals' sessions on `node` in one call of ``register``; its reply holds
    /// one reply per registration, in order.
    public static func registerCommand(_ registrations: [Registration], node: String, keys: FleetKeys) -> RedisCommand {
        var scriptKeys: [String] = []
        scriptKeys.reserveCapacity(registrations.count * 9)
        var arguments = [node, StoredMessage.sessionField]
        arguments.reserveCapacity(2 + registrations.count * 6)
        for registration in registrations {
            let terminal = registration.terminal
            scriptKeys += [
                keys.route(terminal), keys.session(terminal), keys.subscriptions(terminal), keys.revoked(terminal), keys.queue(terminal),
                keys.sent(terminal), keys.released(terminal), keys.releasing(terminal), keys.will(terminal),
            ]
            arguments += [
                registration.epoch, String(registration.connectedAt), registration.cleanStart ? "1" : "0", registration.issuedAt,
                String(registration.readCount), registration.persistent ? "1" : "0",
            ]
        }
        return register.command(keys: scriptKeys, arguments: arguments)
    }

    /// Removes a route only if it still belongs to the connection that is ending, and ends or
    /// keeps the session.
    ///
    /// KEYS: route, session, subscriptions, released, releasing. ARGV: epoch, session expiry in seconds
    /// (0: the session ends now).
    /// Returns 1 when the route was removed.
    public static let unregister = RedisScript(
        """
        \(Route.luaReader)
        local _, epoch = route(KEYS[1])
        if epoch ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[1])
        local expiry = tonumber(ARGV[2])
        if expiry == 0 then
          redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
        else
          redis.call('SET', KEYS[2], '1', 'EX', expiry)
          redis.call('EXPIRE', KEYS[3], expiry)
          redis.call('EXPIRE', KEYS[4], expiry)
          redis.call('EXPIRE', KEYS[5], expiry)
        end
        return 1
        """
    )

    /// Writes a live connection's route back after Redis lost it (restart without the data),
    /// unless another connection registered since.
    ///
    /// KEYS: route. ARGV: node, epoch, connectedAt. Returns 1 when written.
    public static let reassertRoute = RedisScript(
        """
        \(Route.luaReader)
        local _, epoch = route(KEYS[1])
        if epoch and epoch ~= ARGV[2] then return 0 end
        redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3])
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

    /// Stores a retried push for one terminal unless its entry is there already, and reads
    /// where the terminal is connected: ``enqueue`` plus the route's `node`.
    ///
    /// KEYS: queue, route. ARGV: as ``enqueue``.
    /// Returns the node id ("" when not connected), then the entries pushed out by the cap.
    public static let store = RedisScript(
        """
        \(Route.luaReader)
        local node = route(KEYS[2]) or ''
        if ARGV[4] == '1' and redis.call('LPOS', KEYS[1], ARGV[1]) then return {node} end
        local n = redis.call('RPUSH', KEYS[1], ARGV[1])
        local cap = tonumber(ARGV[2])
        local reply = {node}
        if n > cap then
          for _, entry in ipairs(redis.call('LPOP', KEYS[1], n - cap)) do reply[#reply + 1] = entry end
        end
        local ttl = tonumber(ARGV[3])
        if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
        return reply
        """
    )

    /// Stores a push with a collapse key for one terminal: the entry last stored with the same
    /// key is taken out of the list first, unless it is in flight (in the `sent` hash: sent
    /// and not acknowledged) or already gone (delivered). Then as ``store``: append, cap,
    /// expiry, and the route's node.
    ///
    /// KEYS: queue, route, collapse hash, sent hash. ARGV: entry, cap, ttl in milliseconds,
    /// dedupe ("1": skip if the exact entry is in the list already, for a retried push),
    /// collapse key.
    /// Returns the node id ("" when not connected), the entry replaced ("" for none), then the
    /// entries pushed out by the cap.
    public static let storeCollapsing = RedisScript(
        """
        \(Route.luaReader)
        local node = route(KEYS[2]) or ''
        if ARGV[4] == '1' and redis.call('LPOS', KEYS[1], ARGV[1]) then return {node, ''} end
        local replaced = ''
        local old = redis.call('HGET', KEYS[3], ARGV[5])
        if old and old ~= ARGV[1] then
          local ok, decoded = pcall(cjson.decode, old)
          local inflight = ok and type(decoded) == 'table' and type(decoded['id']) == 'string'
            and redis.call('HEXISTS', KEYS[4], decoded['id']) == 1
          if not inflight and redis.call('LREM', KEYS[1], 1, old) == 1 then replaced = old end
        end
        local n = redis.call('RPUSH', KEYS[1], ARGV[1])
        redis.call('HSET', KEYS[3], ARGV[5], ARGV[1])
        local reply = {node, replaced}
        local cap = tonumber(ARGV[2])
        if n > cap then
          for _, entry in ipairs(redis.call('LPOP', KEYS[1], n - cap)) do reply[#reply + 1] = entry end
        end
        local ttl = tonumber(ARGV[3])
        if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
        if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
        return reply
        """
    )

    /// Takes a message's entry out of a terminal's list (a cancelled push), found by its id,
    /// unless it is in flight (in the `sent` hash: sent and not acknowledged).
    ///
    /// KEYS: queue, sent hash. ARGV: message id.
    /// Returns the entry withdrawn, "" when none waits (delivered, expired, dropped), or 0 when
    /// it is in flight.
    public static let withdraw = RedisScript(
        """
        if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
        local needle = '"id":"' .. ARGV[1] .. '"'
        for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
          if string.find(entry, needle, 1, true) then
            redis.call('LREM', KEYS[1], 1, entry)
            return entry
          end
        end
        return ''
        """
    )

    /// Keeps a scheduled push until it is due, within the bound of scheduled pushes.
    ///
    /// KEYS: due zset, pushes hash. ARGV: id, due (ms), the push (JSON), most scheduled.
    /// Returns 1, or 0 when the bound is reached.
    public static let schedule = RedisScript(
        """
        if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
        redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
        redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
        return 1
        """
    )

    /// Takes scheduled pushes that are due (and those a control node took and did not finish
    /// within its lease): each is moved a lease ahead, so no other control node takes it
    /// meanwhile, and returned with its push.
    ///
    /// KEYS: due zset, pushes hash. ARGV: now (ms), lease (ms), most to take.
    /// Returns id, push, id, push, ... (a push cancelled meanwhile is dropped).
    public static let claimScheduled = RedisScript(
        """
        local now = tonumber(ARGV[1])
        local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
        local reply = {}
        for _, id in ipairs(ids) do
          local push = redis.call('HGET', KEYS[2], id)
          if push then
            redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
            reply[#reply + 1] = id
            reply[#reply + 1] = push
          else
            redis.call('ZREM', KEYS[1], id)
          end
        end
        return reply
        """
    )

    /// Trims a terminal's list to the cap, oldest first (after plain RPUSHes made it longer).
    ///
    /// KEYS: queue. ARGV: cap. Returns the entries removed.
    public static let trim = RedisScript(
        """
        local n = redis.call('LLEN', KEYS[1]) - tonumber(ARGV[1])
        if n > 0 then return redis.call('LPOP', KEYS[1], n) end
        return {}
        """
    )

    /// Adds filters to or removes them from one owner's index set and announces what changed.
    ///
    /// KEYS: the owner's index set. ARGV: index channel, owner, operation (`+`, `-`, or `=`
    /// to replace the whole set), filters. Returns the number of filters changed.
    public static let indexUpdate = RedisScript(
        """
        local changed = {}
        if ARGV[3] == '=' then
          redis.call('DEL', KEYS[1])
          for i = 4, #ARGV do
            redis.call('SADD', KEYS[1], ARGV[i])
            changed[#changed + 1] = ARGV[i]
          end
        else
          for i = 4, #ARGV do
            local n
            if ARGV[3] == '+' then n = redis.call('SADD', KEYS[1], ARGV[i]) else n = redis.call('SREM', KEYS[1], ARGV[i]) end
            if n == 1 then changed[#changed + 1] = ARGV[i] end
          end
          if #changed == 0 then return 0 end
        end
        redis.call('PUBLISH', ARGV[1], cjson.encode({owner = ARGV[2], op = ARGV[3], filters = changed}))
        return #changed
        """
    )

    /// Adds a persistent session to (or removes it from) the stored-subscriber sets of some
    /// filters, keeping the stored owner's index set and its announcements in step: a filter
    /// is in the index while at least one persistent session subscribes to it.
    ///
    /// KEYS: the stored owner's index set, then one stored-subscriber set per filter.
    /// ARGV: index channel, terminal, operation (`+` or `-`), then the filters in KEYS order.
    public static let storedSubscriptions = RedisScript(
        """
        local changed = {}
        for i = 2, #KEYS do
          local filter = ARGV[i + 2]
          if ARGV[3] == '+' then
            redis.call('SADD', KEYS[i], ARGV[2])
            if redis.call('SADD', KEYS[1], filter) == 1 then changed[#changed + 1] = filter end
          else
            redis.call('SREM', KEYS[i], ARGV[2])
            if redis.call('SCARD', KEYS[i]) == 0 and redis.call('SREM', KEYS[1], filter) == 1 then
              changed[#changed + 1] = filter
            end
          end
        end
        if #changed > 0 then
          redis.call('PUBLISH', ARGV[1], cjson.encode({owner = '*', op = ARGV[3], filters = changed}))
        end
        return #changed
        """
    )

    /// Stores a published message for a persistent session that is not connected, or whose
    /// node did not get the message (its channel had no listener: the node died).
    ///
    /// KEYS: session, route, queue. ARGV: entry, cap, ttl in milliseconds, then the ids of the
    /// nodes the message reached.
    /// Returns -1 when the session no longer exists (the caller drops it from the filter's
    /// set), 0 when the terminal's node got the message (it delivers it live), 1 when stored,
    /// or the id of the node the terminal is connected to when stored for a terminal whose
    /// node did not get the message (the caller wakes it there).
    public static let storeForSubscriber = RedisScript(
        """
        \(Route.luaReader)
        if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
        local node = route(KEYS[2])
        if node then
          for i = 4, #ARGV do
            if ARGV[i] == node then return 0 end
          end
        end
        local n = redis.call('RPUSH', KEYS[3], ARGV[1])
        local cap = tonumber(ARGV[2])
        if n > cap then redis.call('LPOP', KEYS[3], n - cap) end
        local ttl = tonumber(ARGV[3])
        if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
        if node then return node end
        return 1
        """
    )

    /// Drops the index set of a node whose liveness key expired, and announces it.
    ///
    /// KEYS: the node's liveness key, its index set. ARGV: index channel, node id.
    /// Returns 1 when the node was dead and had filters.
    public static let sweepNode = RedisScript(
        """
        if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
        redis.call('DEL', KEYS[2])
        redis.call('PUBLISH', ARGV[1], cjson.encode({owner = ARGV[2], op = '='}))
        return 1
        """
    )

    /// Sets or deletes a retained message, keeping the byte count of the fleet's retained
    /// messages, within bounds on their number and bytes (a delete always goes through).
    ///
    /// KEYS: retained, retained bytes. ARGV: topic, entry ("" deletes), most messages, most
    /// bytes (0: no bound). Returns 1 when done, 0 when a bound refused it.
    public static let retain = RedisScript(
        """
        local old = redis.call('HSTRLEN', KEYS[1], ARGV[1])
        if ARGV[2] == '' then
          if old > 0 then
            redis.call('HDEL', KEYS[1], ARGV[1])
            redis.call('DECRBY', KEYS[2], old)
          end
          return 1
        end
        local most, bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
        if most > 0 and old == 0 and redis.call('HLEN', KEYS[1]) >= most then return 0 end
        local size = string.len(ARGV[2])
        if bytes > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') - old + size > bytes then return 0 end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('INCRBY', KEYS[2], size - old)
        return 1
        """
    )

    /// Every script, for SCRIPT LOAD on connect.
    public static let all = [
        register, unregister, reassertRoute, enqueue, store, storeCollapsing, withdraw, schedule, claimScheduled, trim, indexUpdate,
        storedSubscriptions,
        storeForSubscriber,
        sweepNode, retain, keepWill, scheduleWill, claimWills, settleWill, deleteIfEqual, removeIdleConsumers,
    ]
}
