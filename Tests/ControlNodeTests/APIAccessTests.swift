import NIOCore
import Testing

@testable import ControlNode

@Suite struct APIAccessTests {
    let access = APIAccess(keys: [
        APIKey(key: "k1"), APIKey(key: "pusher", scopes: [.push]), APIKey(key: "reader", scopes: [.read, .credentials]),
        APIKey(key: "slow", scopes: [.push], rate: 2),
    ])
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test func everyPathButHealthReadinessAndMetricsNeedsAKeyHoweverItIsSpelled() {
        for path in [
            "/v1/credentials", "//v1/credentials", "/v1//credentials", "///v1/push", "/v1/push/", "/v1", "/", "", "/x",
            "/healthz/x", "/metrics/../v1/push", "/%76%31/credentials", "/V1/push", "/./v1/push",
        ] {
            #expect(access.decide(method: "POST", path: path, authorization: nil) == .unauthorized, "\(path)")
        }
        for path in ["/healthz", "//healthz", "/readyz/", "/metrics"] {
            #expect(access.decide(method: "GET", path: path, authorization: nil) == .allow, "\(path)")
        }
    }

    @Test func onlyTheExactBearerKeyIsAccepted() {
        #expect(access.decide(method: "POST", path: "/v1/push", authorization: "Bearer k1") == .allow)
        for wrong in [nil, "", "Bearer", "Bearer k", "Bearer k12", "bearer k1", "Bearer  k1", "k1", "Basic k1"] {
            #expect(access.decide(method: "POST", path: "/v1/push", authorization: wrong) == .unauthorized, "\(wrong ?? "nil")")
        }
    }

    @Test func eachRouteNeedsItsScopeAndAdminHasThemAll() {
        #expect(APIAccess.scope(method: "POST", path: "//v1/push/batch") == .push)
        #expect(APIAccess.scope(method: "DELETE", path: "/v1/credentials/t1") == .credentials)
        #expect(APIAccess.scope(method: "GET", path: "/v1/nodes") == .read)
        #expect(APIAccess.scope(method: "DELETE", path: "/v1/messages/m1") == .push, "cancelling is pushing's")
        #expect(APIAccess.scope(method: "GET", path: "/v1/terminals/t1/queue") == .read)
        #expect(APIAccess.scope(method: "GET", path: "/v1/stats") == .read)
        #expect(APIAccess.scope(method: "DELETE", path: "/v1/terminals/t1/queue/m1") == .push)
        #expect(APIAccess.scope(method: "GET", path: "/v1/terminals/t1/queue/m1") == .admin, "no such route")
        #expect(APIAccess.scope(method: "POST", path: "/v1/shed") == .admin, "calls no scope names need admin")
        #expect(access.decide(method: "POST", path: "/v1/push", authorization: "Bearer pusher") == .allow)
        #expect(access.decide(method: "POST", path: "/v1/credentials", authorization: "Bearer pusher") == .forbidden(.credentials))
        #expect(access.decide(method: "GET", path: "/v1/messages/m1", authorization: "Bearer pusher") == .forbidden(.read))
        #expect(access.decide(method: "GET", path: "/v1/messages/m1", authorization: "Bearer reader") == .allow)
        #expect(access.decide(method: "POST", path: "/v1/push", authorization: "Bearer reader") == .forbidden(.push))
        #expect(access.decide(method: "GET", path: "/v1/terminals/t1", authorization: "Bearer k1") == .allow)
    }

    @Test func aPathsMethodsAreKnownForA405AndOpenPathsStayOpenWhateverTheMethod() {
        #expect(APIRoutes.methods(of: "/v1/push") == ["POST"])
        #expect(APIRoutes.methods(of: "//v1/credentials/t%3A1") == ["DELETE"])
        #expect(APIRoutes.methods(of: "/v1/credentials") == ["POST"])
        #expect(APIRoutes.methods(of: "/v1/pushes").isEmpty)
        #expect(APIRoutes.methods(of: "/v1/terminals/t1/x").isEmpty)
        #expect(access.decide(method: "TRACE", path: "/healthz", authorization: nil) == .allow, "answered 405, without a key")
        #expect(access.decide(method: "GET", path: "/openapi.json", authorization: nil) == .allow)
        #expect(access.decide(method: "TRACE", path: "/v1/push", authorization: nil) == .unauthorized)
        #expect(access.decide(method: "TRACE", path: "/v1/push", authorization: "Bearer pusher") == .forbidden(.admin))
    }

    @Test func aKeysRateAllowsABurstOfOneSecondThenRefillsOverTime() {
        #expect(access.decide(method: "POST", path: "/v1/push", authorization: "Bearer slow", now: start) == .allow)
        #expect(access.decide(method: "POST", path: "/v1/push", authorization: "Bearer slow", now: start) == .allow)
        #expect(
            access.decide(method: "POST", path: "/v1/push", authorization: "Bearer slow", now: start) == .tooManyRequests(retryAfter: 1))
        #expect(access.decide(method: "POST", path: "/v1/push", authorization: "Bearer slow", now: start + .milliseconds(500)) == .allow)
        // Another key is not affected.
        #expect(access.decide(method: "POST", path: "/v1/push", authorization: "Bearer pusher", now: start) == .allow)
    }

    @Test func withoutKeysNothingIsRequired() {
        #expect(APIAccess(keys: []).decide(method: "POST", path: "/v1/push", authorization: nil) == .allow)
    }

    @Test func keyFilesAreReadAndBadLinesRefused() throws {
        let keys = try APIKey.parse(file: "# comment\n\nk1 push,read 50\nk2\tadmin\n")
        #expect(keys == [APIKey(key: "k1", scopes: [.push, .read], rate: 50), APIKey(key: "k2", scopes: [.admin])])
        #expect(throws: APIKeyFileError.self) { try APIKey.parse(file: "k1 pushy") }
        #expect(throws: APIKeyFileError.self) { try APIKey.parse(file: "k1 push 0") }
        #expect(throws: APIKeyFileError.self) { try APIKey.parse(file: "k1") }
    }
}
