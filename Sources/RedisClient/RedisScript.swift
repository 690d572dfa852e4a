import Crypto

/// A Lua script run with EVALSHA, falling back to EVAL when Redis answers NOSCRIPT
/// (after a restart or SCRIPT FLUSH).
public struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    public let source: String
    /// The SHA1 of the source, as Redis computes it.
    public let sha1: String

    public init(_ source: String) {
        self.source = source
        self.sha1 = Insecure.SHA1.hash(data: Array(source.utf8)).map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined()
    }

    /// `EVALSHA sha numkeys keys... args...`
    public func command(keys: [String], arguments: [String]) -> RedisCommand {
        RedisCommand("EVALSHA", [sha1, String(keys.count)] + keys + arguments)
    }

    /// `EVAL source numkeys keys... args...`: the NOSCRIPT fallback.
    func evalCommand(from evalsha: RedisCommand) -> RedisCommand {
        var arguments = evalsha.arguments
        arguments[0] = Array("EVAL".utf8)
        arguments[1] = Array(source.utf8)
        return RedisCommand(arguments)
    }
}
