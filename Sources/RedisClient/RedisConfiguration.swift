import NIOCore

/// Where and how to connect to Redis.
///
/// Built from a URL: `redis://[:password@]host[:port][/database]`. Timeouts bound every
/// command: a reply that does not arrive in `commandTimeout` fails the command and resets
/// the connection. After a connection is lost the client reconnects with exponential backoff
/// from `minimumBackoff` to `maximumBackoff`; while disconnected, commands fail at once with
/// ``RedisError/Code/unavailable`` rather than queueing without bound.
public struct RedisConfiguration: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var password: String?
    public var database: Int
    public var connectTimeout: TimeAmount = .seconds(2)
    public var commandTimeout: TimeAmount = .seconds(5)
    public var minimumBackoff: TimeAmount = .milliseconds(50)
    public var maximumBackoff: TimeAmount = .seconds(2)

    public init(host: String, port: Int = 6379, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.password = password
        self.database = database
    }

    /// Parses `redis://[:password@]host[:port][/database]`.
    public init(url: String) throws {
        guard url.hasPrefix("redis://") else { throw RedisError(.invalidConfiguration, "expected redis://host:port, got \(url)") }
        var rest = Substring(url.dropFirst("redis://".count))
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            password = String(credentials.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).last ?? "")
            rest = rest[rest.index(after: at)...]
        }
        var database = 0
        if let slash = rest.firstIndex(of: "/") {
            let db = rest[rest.index(after: slash)...]
            if !db.isEmpty {
                guard let value = Int(db) else { throw RedisError(.invalidConfiguration, "bad database in \(url)") }
                database = value
            }
            rest = rest[..<slash]
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":") {
            guard let value = Int(rest[rest.index(after: colon)...]), (1...65535).contains(value) else {
                throw RedisError(.invalidConfiguration, "bad port in \(url)")
            }
            port = value
            host = String(rest[..<colon])
        }
        guard !host.isEmpty else { throw RedisError(.invalidConfiguration, "missing host in \(url)") }
        self.init(host: host, port: port, password: password?.isEmpty == true ? nil : password, database: database)
    }
}
