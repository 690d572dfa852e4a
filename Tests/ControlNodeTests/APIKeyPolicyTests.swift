import Testing

@testable import ControlNode

@Suite struct APIKeyPolicyTests {
    let policy = APIKeyPolicy(apiKey: "k1")

    @Test func everyPathButHealthReadinessAndMetricsNeedsTheKeyHoweverItIsSpelled() {
        for path in [
            "/v1/credentials", "//v1/credentials", "/v1//credentials", "///v1/push", "/v1/push/", "/v1", "/", "", "/x",
            "/healthz/x", "/metrics/../v1/push", "/%76%31/credentials", "/V1/push",
        ] {
            #expect(policy.requiresKey(path: path), "\(path)")
        }
        for path in ["/healthz", "//healthz", "/readyz/", "/metrics"] {
            #expect(!policy.requiresKey(path: path), "\(path)")
        }
    }

    @Test func onlyTheExactBearerKeyIsAccepted() {
        #expect(policy.accepts(authorization: "Bearer k1"))
        for wrong in [nil, "", "Bearer", "Bearer k", "Bearer k12", "bearer k1", "Bearer  k1", "k1", "Basic k1"] {
            #expect(!policy.accepts(authorization: wrong), "\(wrong ?? "nil")")
        }
    }

    @Test func withoutAKeyNothingIsRequired() {
        let open = APIKeyPolicy(apiKey: nil)
        #expect(!open.requiresKey(path: "/v1/push"))
        #expect(open.accepts(authorization: nil))
    }
}
