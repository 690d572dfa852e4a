import Crypto
import Foundation

/// Issues and verifies terminal credentials: `v1.<issuedAtMillis>.<expiresAt>.<signature>`, where the
/// signature is HMAC-SHA256 with the fleet secret over `v1|<terminal>|<issuedAt>|<expiresAt>`,
/// base64url without padding.
///
/// Any push node verifies a credential locally, without Redis. Revocation is checked during
/// session registration, which is a Redis round trip the node makes anyway: a credential
/// issued at or before the terminal's revocation time is refused.
public struct CredentialAuthority: Sendable {
    /// Why a credential was refused.
    public enum Failure: Error, Hashable, Sendable {
        case malformed
        case badSignature
        case expired
    }

    /// A verified credential.
    public struct Verified: Hashable, Sendable {
        public var issuedAt: Int64
        public var expiresAt: Int64
    }

    private let secret: [UInt8]
    private var key: SymmetricKey { SymmetricKey(data: secret) }

    public init(secret: String) {
        self.secret = Array(secret.utf8)
    }

    /// Issues a credential for `terminal`, valid `ttl` seconds from `nowMillis`.
    ///
    /// `issuedAt` is in milliseconds so a credential issued right after a revocation is newer
    /// than it; `expiresAt` is in seconds.
    public func issue(terminal: String, ttl: Int64, nowMillis: Int64) -> (password: String, expiresAt: Int64) {
        let expiresAt = nowMillis / 1000 + ttl
        return ("v1.\(nowMillis).\(expiresAt).\(signature(terminal: terminal, issuedAt: nowMillis, expiresAt: expiresAt))", expiresAt)
    }

    /// Verifies `password` for `terminal` at time `now` (unix seconds). `issuedAt` of the result is in milliseconds.
    public func verify(terminal: String, password: String, now: Int64) -> Result<Verified, Failure> {
        let parts = password.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "v1", let issuedAt = Int64(parts[1]), let expiresAt = Int64(parts[2]),
            let mac = Data(base64URL: String(parts[3]))
        else { return .failure(.malformed) }
        let message = Array("v1|\(terminal)|\(issuedAt)|\(expiresAt)".utf8)
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: message, using: key) else {
            return .failure(.badSignature)
        }
        guard expiresAt > now else { return .failure(.expired) }
        return .success(Verified(issuedAt: issuedAt, expiresAt: expiresAt))
    }

    private func signature(terminal: String, issuedAt: Int64, expiresAt: Int64) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("v1|\(terminal)|\(issuedAt)|\(expiresAt)".utf8), using: key)
        return Data(mac).base64URLEncodedString()
    }
}

extension Data {
    /// Base64url without padding.
    public func base64URLEncodedString() -> String {
        var bytes = Array(base64EncodedData())
        while bytes.last == UInt8(ascii: "=") { bytes.removeLast() }
        for index in bytes.indices {
            switch bytes[index] {
            case UInt8(ascii: "+"): bytes[index] = UInt8(ascii: "-")
            case UInt8(ascii: "/"): bytes[index] = UInt8(ascii: "_")
            default: break
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Decodes base64url with or without padding (byte by byte: Foundation's string search
    /// was most of a credential check).
    public init?(base64URL: String) {
        var bytes = Array(base64URL.utf8)
        for index in bytes.indices {
            switch bytes[index] {
            case UInt8(ascii: "-"): bytes[index] = UInt8(ascii: "+")
            case UInt8(ascii: "_"): bytes[index] = UInt8(ascii: "/")
            case UInt8(ascii: "+"), UInt8(ascii: "/"): return nil
            default: break
            }
        }
        while bytes.count % 4 != 0 { bytes.append(UInt8(ascii: "=")) }
        self.init(base64Encoded: Data(bytes))
    }
}
