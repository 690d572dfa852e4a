/// The control node's routes by path, for what the router alone does not answer: which scope a
/// call needs (``APIAccess``) and which methods a path has (405 with `Allow` for the others).
/// Paths are read as the router reads them: empty segments dropped.
enum APIRoutes {
    /// A route's path with its parameter, if any, as `*`: `v1/credentials/t1` -> `v1/credentials/*`.
    static func pattern(of path: String) -> String {
        var segments = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        if segments.count >= 3, segments[0] == "v1", ["credentials", "messages", "terminals"].contains(segments[1]) { segments[2] = "*" }
        if segments.count == 5, segments[1] == "terminals", segments[3] == "queue" { segments[4] = "*" }
        return segments.joined(separator: "/")
    }

    /// Every route: its pattern, method and scope (nil: open).
    static let all: [(pattern: String, method: String, scope: APIScope?)] = [
        ("healthz", "GET", nil),
        ("readyz", "GET", nil),
        ("metrics", "GET", nil),
        ("openapi.json", "GET", nil),
        ("ui", "GET", nil),
        ("ui/ui.js", "GET", nil),
        ("ui/ui.css", "GET", nil),
        ("v1/push", "POST", .push),
        ("v1/push/batch", "POST", .push),
        ("v1/credentials", "POST", .credentials),
        ("v1/credentials/*", "DELETE", .credentials),
        ("v1/messages/*", "GET", .read),
        ("v1/messages/*", "DELETE", .push),
        ("v1/terminals/*", "GET", .read),
        ("v1/terminals/*/queue", "GET", .read),
        ("v1/terminals/*/queue/*", "DELETE", .push),
        ("v1/nodes", "GET", .read),
        ("v1/stats", "GET", .read),
    ]

    /// The methods a path has; empty for a path no route has.
    static func methods(of path: String) -> [String] {
        let pattern = pattern(of: path)
        return all.filter { $0.pattern == pattern }.map(\.method)
    }

    /// The scope a call needs: its route's, `admin` for anything else; nil on the open routes'
    /// paths (whatever the method: one they lack is answered 405 without a key).
    static func scope(method: String, path: String) -> APIScope? {
        let pattern = pattern(of: path)
        let routes = all.filter { $0.pattern == pattern }
        if routes.contains(where: { $0.scope == nil }) { return nil }
        return routes.first(where: { $0.method == method })?.scope ?? .admin
    }
}
