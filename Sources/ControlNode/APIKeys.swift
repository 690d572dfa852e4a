import NIOConcurrencyHelpers
import NIOCore

/// What an API key may do.
public enum APIScope: String, Sendable, CaseIterable {
    /// `POST /v1/push`, `POST /v1/push/batch`, `DELETE /v1/messages/{id}`, `DELETE` of a queue entry.
    case push
    /// `POST /v1/credentials`, `DELETE /v1/credentials/{terminal}`.
    case credentials
    /// `GET /v1/messages/{id}`, `GET /v1/terminals/{id}` (and its queue), `GET /v1/nodes`,
    /// `GET /v1/stats`.
    case read
    /// Everything, including calls no other scope names.
    case admin
}

/// An API key with its scopes and, optionally, its own rate limit.
public struct APIKey: Sendable, Hashable {
    public var key: String
    public var scopes: Set<APIScope>
    /// Requests per second (burst: one second's worth); nil: no limit.
    public var rate: Int?

    public init(key: String, scopes: Set<APIScope> = [.admin], rate: Int? = nil) {
        self.key = key
        self.scopes = scopes
        self.rate = rate
    }

    /// Keys from a file: one a line, `KEY SCOPE[,SCOPE...] [REQUESTS_PER_SECOND]`; blank lines
    /// and lines starting with `#` are skipped.
    public static func parse(file contents: String) throws -> [APIKey] {
        var keys: [APIKey] = []
        for (number, line) in contents.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = fields.first, !first.hasPrefix("#") else { continue }
            guard fields.count == 2 || fields.count == 3 else {
                throw APIKeyFileError(line: number + 1, message: "expected KEY SCOPES [RATE]")
            }
            var scopes: Set<APIScope> = []
            for name in fields[1].split(separator: ",") {
                guard let scope = APIScope(rawValue: String(name)) else {
                    throw APIKeyFileError(line: number + 1, message: "unknown scope '\(name)' (push, credentials, read, admin)")
                }
                scopes.insert(scope)
            }
            var rate: Int?
            if fields.count == 3 {
                guard let value = Int(fields[2]), value > 0 else {
                    throw APIKeyFileError(line: number + 1, message: "the rate must be a positive number of requests per second")
                }
                rate = value
            }
            keys.append(APIKey(key: String(first), scopes: scopes, rate: rate))
        }
        return keys
    }
}

/// A line of an API key file that could not be read.
public struct APIKeyFileError: Error, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "API key file, line \(line): \(message)" }
}

/// Who may make which request: every one but health, readiness and metrics needs a key when
/// any is configured, with the scope the route needs (``scope(method:path:)``), within the
/// key's rate. Decided on the path as the router reads it (empty segments dropped: `//v1/push`
/// routes to `/v1/push`), by what is open rather than by what is protected, so a path the
/// router reads differently from a prefix check is still protected.
final class APIAccess: Sendable {
    enum Decision: Equatable {
        case allow
        /// No key, or an unknown one: 401.
        case unauthorized
        /// A known key without the scope: 403.
        case forbidden(APIScope)
        /// Over the key's rate: 429, retry after this many seconds.
        case tooManyRequests(retryAfter: Int)
    }

    private struct Bucket {
        var tokens: Double
        var updated: NIODeadline
    }

    private let keys: [APIKey]
    private let buckets: NIOLockedValueBox<[Int: Bucket]>

    init(keys: [APIKey]) {
        self.keys = keys
        self.buckets = NIOLockedValueBox([:])
    }

    var isOpen: Bool { keys.isEmpty }

    /// The scope a request needs; nil for the open routes.
    static func scope(method: String, path: String) -> APIScope? {
        APIRoutes.scope(method: method, path: path)
    }

    func decide(method: String, path: String, authorization: String?, now: NIODeadline = .now()) -> Decision {
        guard !keys.isEmpty, let scope = Self.scope(method: method, path: path) else { return .allow }
        guard let index = keyIndex(authorization) else { return .unauthorized }
        let key = keys[index]
        guard key.scopes.contains(scope) || key.scopes.contains(.admin) else { return .forbidden(scope) }
        guard let rate = key.rate else { return .allow }
        return buckets.withLockedValue { buckets in
            var bucket = buckets[index] ?? Bucket(tokens: Double(rate), updated: now)
            let elapsed = Double((now - bucket.updated).nanoseconds) / 1e9
            bucket.tokens = min(Double(rate), bucket.tokens + max(0, elapsed) * Double(rate))
            bucket.updated = now
            defer { buckets[index] = bucket }
            guard bucket.tokens >= 1 else { return .tooManyRequests(retryAfter: 1) }
            bucket.tokens -= 1
            return .allow
        }
    }

    /// The key `authorization` (`Bearer <key>`) names, every key compared in constant time.
    private func keyIndex(_ authorization: String?) -> Int? {
        let given = Array((authorization ?? "").utf8)
        var found: Int?
        for (index, key) in keys.enumerated() {
            let expected = Array("Bearer \(key.key)".utf8)
            var difference = UInt8(expected.count == given.count ? 0 : 1)
            for position in expected.indices { difference |= expected[position] ^ (position < given.count ? given[position] : 0) }
            if difference == 0 && found == nil { found = index }
        }
        return found
    }
}
