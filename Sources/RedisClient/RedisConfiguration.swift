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
    /// Find the master through Redis Sentinel (`host` and `port` are then not used).
    public var sentinel: Sentinel?
    /// Whether a client asks the server if it is a Redis Cluster node and then serves the
    /// whole cluster (``RedisConnection``); false talks to the server named only (a tool
    /// looking at one node of a cluster).
    public var detectsCluster = true
    /// More nodes of the same Redis Cluster: the first connection tries them in turn while
    /// `host:port` does not answer, and the cluster client asks them for the slot map too.
    /// (For one server, give one address: these would be other servers.)
    public var seeds: [RedisAddress] = []
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

extension RedisConfiguration {
    /// Parses `--redis`: one URL, or several separated by commas (nodes of one Redis Cluster:
    /// the first gives the password and database, the others add ``seeds``).
    public init(urls: String) throws {
        let items = urls.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard let first = items.first else { throw RedisError(.invalidConfiguration, "no Redis URL in \(urls)") }
        try self.init(url: first)
        seeds = try items.dropFirst().map { item in
            let seed = try RedisConfiguration(url: item)
            return RedisAddress(host: seed.host, port: seed.port)
        }
    }

    /// Where the client connects, for logs and errors.
    public var target: String {
        if let sentinel {
            return "sentinel master \(sentinel.masterName) (\(sentinel.addresses.map(\.description).joined(separator: ",")))"
        }
        return RedisAddress(host: host, port: port).description
    }

    /// The Sentinels that know where the master of `masterName` is: on every (re)connect the
    /// client asks them in turn (`SENTINEL get-master-addr-by-name`), connects there and checks
    /// that the server is a master (`ROLE`); a write refused with READONLY (the server it was
    /// connected to was demoted) closes the connection, and the next connect asks again.
    public struct Sentinel: Sendable, Hashable {
        public var addresses: [Address]
        public var masterName: String
        /// For Sentinels that require AUTH (`requirepass` in sentinel.conf).
        public var password: String?

        public typealias Address = RedisAddress

        public init(addresses: [Address], masterName: String, password: String? = nil) {
            self.addresses = addresses
            self.masterName = masterName
            self.password = password
        }

        /// Parses `host:port[,host:port...]` (IPv6 hosts in brackets; port 26379 by default).
        public init(list: String, masterName: String, password: String? = nil) throws {
            var addresses: [Address] = []
            for item in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
                var host = item
                var port = 26379
                if item.hasPrefix("["), let close = item.firstIndex(of: "]") {
                    host = String(item[item.index(after: item.startIndex)..<close])
                    let rest = item[item.index(after: close)...]
                    if rest.hasPrefix(":") {
                        guard let value = Int(rest.dropFirst()) else {
                            throw RedisError(.invalidConfiguration, "bad sentinel port in \(item)")
                        }
                        port = value
                    }
                } else if let colon = item.lastIndex(of: ":") {
                    host = String(item[..<colon])
                    guard let value = Int(item[item.index(after: colon)...]) else {
                        throw RedisError(.invalidConfiguration, "bad sentinel port in \(item)")
                    }
                    port = value
                }
                guard !host.isEmpty, (1...65535).contains(port) else {
                    throw RedisError(.invalidConfiguration, "bad sentinel address \(item)")
                }
                addresses.append(Address(host: host, port: port))
            }
            guard !addresses.isEmpty else { throw RedisError(.invalidConfiguration, "no sentinel address in \(list)") }
            guard !masterName.isEmpty else { throw RedisError(.invalidConfiguration, "a sentinel master name is needed") }
            self.init(addresses: addresses, masterName: masterName, password: password)
        }
    }
}

/// A Redis server's host and port (a Sentinel, a cluster node).
public struct RedisAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `host:port`, an IPv6 host in brackets.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

extension RedisConfiguration: CustomStringConvertible, CustomDebugStringConvertible {
    /// Where Redis is; never the password.
    public var description: String { "RedisConfiguration(\(target), database: \(database))" }
    public var debugDescription: String { description }
}

extension RedisConfiguration.Sentinel: CustomStringConvertible, CustomDebugStringConvertible {
    /// The Sentinels and the master's name; never the password.
    public var description: String { "Sentinel(\(masterName) at \(addresses.map(\.description).joined(separator: ",")))" }
    public var debugDescription: String { description }
}
