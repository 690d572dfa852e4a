import FleetCore
import FleetTestSupport
import Foundation
import Testing

struct CredentialTests {
    let authority = CredentialAuthority(secret: "s3cret")

    @Test func issuedCredentialVerifies() throws {
        let issued = authority.issue(terminal: "t1", ttl: 60, nowMillis: 1_000_000)
        let verified = try authority.verify(terminal: "t1", password: issued.password, now: 1_000).get()
        #expect(verified.issuedAt == 1_000_000)
        #expect(verified.expiresAt == 1_060)
        #expect(issued.expiresAt == 1_060)
    }

    @Test func refusals() {
        let issued = authority.issue(terminal: "t1", ttl: 60, nowMillis: 1_000_000)
        #expect(authority.verify(terminal: "t2", password: issued.password, now: 1_000) == .failure(.badSignature))
        #expect(authority.verify(terminal: "t1", password: issued.password, now: 1_060) == .failure(.expired))
        #expect(
            CredentialAuthority(secret: "other").verify(terminal: "t1", password: issued.password, now: 1_000) == .failure(.badSignature))
        #expect(authority.verify(terminal: "t1", password: "nonsense", now: 1_000) == .failure(.malformed))
        // Extending the expiry breaks the signature.
        let parts = issued.password.split(separator: ".")
        let forged = "v1.\(parts[1]).9999999999.\(parts[3])"
        #expect(authority.verify(terminal: "t1", password: forged, now: 1_000) == .failure(.badSignature))
    }

    @Test func base64URLAgreesWithStandardBase64() {
        var generator = SeededGenerator(seed: 0x5EED_0004)
        for length in 0..<40 {
            let data = Data((0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) })
            let standard = data.base64EncodedString()
            let url = data.base64URLEncodedString()
            #expect(!url.contains("=") && !url.contains("+") && !url.contains("/"))
            #expect(
                url
                    == standard.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                    .replacingOccurrences(of: "=", with: ""))
            #expect(Data(base64URL: url) == data)
        }
        #expect(Data(base64URL: "a+b/") == nil)  // standard alphabet is not base64url
        #expect(Data(base64URL: "a*b") == nil)
    }

    @Test func terminalIDs() {
        #expect(TerminalID.isValid("phone-42_a.b:c@d"))
        #expect(!TerminalID.isValid(""))
        #expect(!TerminalID.isValid("a/b"))
        #expect(!TerminalID.isValid("a{b}"))
        #expect(!TerminalID.isValid("a b"))
        #expect(!TerminalID.isValid(String(repeating: "x", count: 129)))
    }

    @Test func keysOfOneTerminalShareAHashTag() {
        let keys = FleetKeys(prefix: "p:")
        for key in [keys.route("t1"), keys.queue("t1"), keys.sent("t1"), keys.subscriptions("t1"), keys.session("t1"), keys.revoked("t1")] {
            #expect(key.hasPrefix("p:{t:t1}:"))
        }
        #expect(keys.statusBucket(StatusBucket(second: 7, shard: 1)) == "p:{s:7:1}:status")
    }

    @Test func storedMessageRoundTrip() {
        let message = StoredMessage(id: "m1", qos: 1, expiresAt: 5, topic: "push/t1", payload: [0, 1, 255])
        #expect(StoredMessage.decode(message.encoded()) == message)
        #expect(message.payloadBytes == [0, 1, 255])
        #expect(message.isExpired(nowMillis: 5))
        #expect(!message.isExpired(nowMillis: 4))
    }
}
