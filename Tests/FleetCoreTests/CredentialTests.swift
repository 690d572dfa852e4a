import Crypto
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

    /// The check reads the password in place; it must accept exactly what a straightforward
    /// check (split, Foundation base64, HMAC over the reformatted text) accepts.
    @Test func noAlteredCredentialIsAccepted() {
        func reference(_ terminal: String, _ password: String, now: Int64) -> Bool {
            let parts = password.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4, parts[0] == "v1", let issued = Int64(parts[1]), let expires = Int64(parts[2]),
                String(issued) == parts[1], String(expires) == parts[2]
            else { return false }
            // Foundation's base64, after translating the url alphabet and padding.
            var standard = parts[3].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            guard !parts[3].contains("+"), !parts[3].contains("/") else { return false }
            while standard.count % 4 != 0 { standard += "=" }
            guard let mac = Data(base64Encoded: standard) else { return false }
            let code = HMAC<SHA256>.authenticationCode(
                for: Array("v1|\(terminal)|\(issued)|\(expires)".utf8), using: SymmetricKey(data: Array("s3cret".utf8)))
            return Data(code) == mac && expires > now
        }
        var generator = SeededGenerator(seed: 0x5EED_0013)
        let alphabet = Array("v1.0123456789-_=+/aZ".utf8)
        for round in 0..<300 {
            let terminal = "t\(UInt32.random(in: 0...999_999, using: &generator))"
            let issued = authority.issue(
                terminal: terminal, ttl: Int64.random(in: 1...1_000_000, using: &generator), nowMillis: 1_700_000_000_000)
            let verified = try? authority.verify(terminal: terminal, password: issued.password, now: 1_700_000_000).get()
            #expect(verified?.issuedAt == 1_700_000_000_000 && verified?.expiresAt == issued.expiresAt)
            // Every position changed, dropped, or doubled; bytes added at the end.
            var bytes = Array(issued.password.utf8)
            let index = round % bytes.count
            var variants: [[UInt8]] = []
            var changed = bytes
            changed[index] = alphabet.randomElement(using: &generator)!
            variants.append(changed)
            var dropped = bytes
            dropped.remove(at: index)
            variants.append(dropped)
            var doubled = bytes
            doubled.insert(bytes[index], at: index)
            variants.append(doubled)
            bytes.append(alphabet.randomElement(using: &generator)!)
            variants.append(bytes)
            for variant in variants {
                let password = String(decoding: variant, as: UTF8.self)
                let accepted = (try? authority.verify(terminal: terminal, password: password, now: 1_700_000_000).get()) != nil
                #expect(accepted == reference(terminal, password, now: 1_700_000_000), "\(password)")
            }
        }
        // Leading zeros and signs are not how credentials are written: refused.
        let issued = authority.issue(terminal: "t1", ttl: 60, nowMillis: 1_000_000)
        let parts = issued.password.split(separator: ".")
        for altered in ["v1.0\(parts[1]).\(parts[2]).\(parts[3])", "v1.+\(parts[1]).\(parts[2]).\(parts[3])"] {
            #expect(authority.verify(terminal: "t1", password: altered, now: 1_000) == .failure(.malformed))
        }
        // The signature's padding is optional, as base64url has it.
        #expect((try? authority.verify(terminal: "t1", password: issued.password + "=", now: 1_000).get()) != nil)
        #expect(authority.verify(terminal: "t1", password: issued.password + "==", now: 1_000) == .failure(.malformed))
        #expect(authority.verify(terminal: "t1", password: "", now: 1_000) == .failure(.malformed))
        #expect(authority.verify(terminal: "t1", password: "v1.", now: 1_000) == .failure(.malformed))
        #expect(authority.verify(terminal: "t1", password: "v1.1.2.", now: 1_000) == .failure(.malformed))
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
