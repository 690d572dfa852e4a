import Foundation
import NIOCore

/// Where and how to connect to Redis.
///
/// Built from a URL: `redis://[[user]:password@]host[:port][/database]`. Timeouts bound every
/// command: a reply that does not arrive in `commandTimeout` fails the command and resets
/// the connection. After a connection is lost the client reconnects with exponential backoff
/// from `minimumBackoff` to `maximumBackoff`; while disconnected, commands fail at once with
/// ``RedisError/Code/unavailable`` rather than queueing without bound.
public struct RedisConfiguration: Sendable, Hashable {
    public var host: String
    public var port: Int
    /// User name for Redis ACLs (AUTH user password); none: the default user.
    public var username: String?
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

    /// Parses `redis://[[user]:password@]host[:port][/database]` with a URL parser: a user name
    /// (Redis ACLs), an IPv6 host in brackets, percent-encoded user names and passwords.
    public init(url: String) throws {
        let expected = "expected redis://[[user]:password@]host[:port][/database]"
        guard let components = URLComponents(string: url), components.scheme?.lowercased() == "redis" else {
            if url.lowercased().hasPrefix("rediss://") {
                throw RedisError(.invalidConfiguration, "TLS to Redis (rediss://) is not supported")
            }
            throw RedisError(.invalidConfiguration, "\(expected), got \(url)")
        }
        var host = components.host ?? ""
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw RedisError(.invalidConfiguration, "missing host in \(url)") }
        let port = components.port ?? 6379
        guard (1...65535).contains(port) else { throw RedisError(.invalidConfiguration, "bad port in \(url)") }
        var database = 0
        let path = components.path.drop { $0 == "/" }
        if !path.isEmpty {
            guard let value = Int(path), value >= 0 else { throw RedisError(.invalidConfiguration, "bad database in \(url)") }
            database = value
        }
        self.init(host: host, port: port, password: components.password.flatMap { $0.isEmpty ? nil : $0 }, database: database)
        username = components.user.flatMap { $0.isEmpty ? nil : $0 }
    }
}
