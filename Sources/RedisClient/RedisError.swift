/// An error from the Redis client.
///
/// ``Code/server`` carries Redis's own error reply (`NOSCRIPT ...`, `WRONGTYPE ...`).
/// ``Code/unavailable`` means no connection is up right now (the client keeps reconnecting
/// with backoff); callers answering users should turn it into "try again later".
public struct RedisError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        /// Redis answered with an error reply.
        public static let server = Code(name: "server")
        /// No reply arrived within the command timeout; the connection was reset.
        public static let timeout = Code(name: "timeout")
        /// Not connected to Redis (connecting, or waiting to reconnect).
        public static let unavailable = Code(name: "unavailable")
        /// The connection closed before the reply arrived.
        public static let connectionClosed = Code(name: "connectionClosed")
        /// hiredis could not parse what the server sent.
        public static let protocolError = Code(name: "protocolError")
        /// The reply did not have the shape the caller expected.
        public static let unexpectedReply = Code(name: "unexpectedReply")
        /// The configuration (URL) is invalid.
        public static let invalidConfiguration = Code(name: "invalidConfiguration")
        /// A command's keys hash to more than one Redis Cluster slot.
        public static let crossSlot = Code(name: "crossSlot")
        /// A Redis Cluster kept redirecting a command (MOVED, ASK) past the bound.
        public static let tooManyRedirects = Code(name: "tooManyRedirects")
        public var description: String { name }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "redis \(code): \(message)" }
}

extension RedisError {
    /// An error reply that says "not now" rather than "never": the server is a replica since a
    /// failover (READONLY), is loading its data (LOADING), has lost its master (MASTERDOWN), or
    /// a cluster slot is moving or down (TRYAGAIN, CLUSTERDOWN). Retrying shortly succeeds.
    public var isTransient: Bool {
        guard code == .server else { return false }
        return ["READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"].contains { message.contains($0) }
    }
}
