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
    /// HMAC keyed with the secret, copied for each check (keying it costs two hash blocks).
    private let keyed: KeyedHMAC

    public init(secret: String) {
        self.secret = Array(secret.utf8)
        self.keyed = KeyedHMAC(HMAC<SHA256>(key: SymmetricKey(data: Array(secret.utf8))))
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
    ///
    /// Every push node runs this for every CONNECT: it reads the password's bytes in place,
    /// decodes the signature into a stack buffer and feeds the signed text to a copy of the
    /// keyed HMAC piece by piece, allocating nothing.
    public func verify(terminal: String, password: String, now: Int64) -> Result<Verified, Failure> {
        var password = password
        var terminal = terminal
        return password.withUTF8 { password in
            terminal.withUTF8 { terminal in verify(terminal: terminal, password: password, now: now) }
        }
    }

    private func verify(terminal: UnsafeBufferPointer<UInt8>, password: UnsafeBufferPointer<UInt8>, now: Int64) -> Result<Verified, Failure>
    {
        // v1.<issuedAt>.<expiresAt>.<signature>
        guard password.count > 3, password[0] == UInt8(ascii: "v"), password[1] == UInt8(ascii: "1"), password[2] == UInt8(ascii: ".")
        else { return .failure(.malformed) }
        var position = 3
        guard let issued = Self.number(in: password, from: &position), let expires = Self.number(in: password, from: &position) else {
            return .failure(.malformed)
        }
        let signature = UnsafeBufferPointer(rebasing: password[position...])
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 33) { decoded in
            guard Base64URL.decode(signature, into: decoded) == SHA256.byteCount else { return .failure(.malformed) }
            var hmac = keyed.hmac
            ("v1|" as StaticString).withUTF8Buffer { hmac.update(data: UnsafeRawBufferPointer($0)) }
            hmac.update(data: UnsafeRawBufferPointer(terminal))
            ("|" as StaticString).withUTF8Buffer { hmac.update(data: UnsafeRawBufferPointer($0)) }
            hmac.update(data: UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: password[issued.digits])))
            ("|" as StaticString).withUTF8Buffer { hmac.update(data: UnsafeRawBufferPointer($0)) }
            hmac.update(data: UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: password[expires.digits])))
            let code = hmac.finalize()
            // Constant time: every byte is compared whatever the first difference.
            let difference = code.withUnsafeBytes { expected in
                (0..<SHA256.byteCount).reduce(UInt8(0)) { $0 | (expected[$1] ^ decoded[$1]) }
            }
            guard difference == 0 else { return .failure(.badSignature) }
            guard expires.value > now else { return .failure(.expired) }
            return .success(Verified(issuedAt: issued.value, expiresAt: expires.value))
        }
    }

    /// A decimal number as `issue` writes it (no sign, no leading zero, at most 18 digits)
    /// followed by a dot, read from `position`, which moves past the dot.
    private static func number(in bytes: UnsafeBufferPointer<UInt8>, from position: inout Int) -> (value: Int64, digits: Range<Int>)? {
        let start = position
        var value: Int64 = 0
        while position < bytes.count, bytes[position] != UInt8(ascii: ".") {
            let digit = bytes[position] &- UInt8(ascii: "0")
            guard digit < 10, position - start < 18 else { return nil }
            value = value * 10 + Int64(digit)
            position += 1
        }
        let digits = start..<position
        guard position < bytes.count, !digits.isEmpty, digits.count == 1 || bytes[start] != UInt8(ascii: "0") else { return nil }
        position += 1
        return (value, digits)
    }

    private func signature(terminal: String, issuedAt: Int64, expiresAt: Int64) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("v1|\(terminal)|\(issuedAt)|\(expiresAt)".utf8), using: key)
        return Data(mac).base64URLEncodedString()
    }
}

/// Base64url decoding in place, for credentials (checked on every CONNECT) and
/// `Data(base64URL:)`.
enum Base64URL {
    /// Decodes base64url (with or without its padding) into `output`; returns the number of
    /// bytes, or -1 when the text is not base64url or longer than `output`.
    static func decode(_ text: UnsafeBufferPointer<UInt8>, into output: UnsafeMutableBufferPointer<UInt8>) -> Int {
        var count = text.count
        while count > 0, text[count - 1] == UInt8(ascii: "=") { count -= 1 }
        // Padding, when there is any, completes the last group of four.
        guard text.count == count || text.count % 4 == 0, count % 4 != 1, count * 3 / 4 <= output.count else { return -1 }
        var accumulator: UInt32 = 0
        var bits = 0
        var written = 0
        for index in 0..<count {
            let byte = text[index]
            let value: UInt8
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = byte - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = byte - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = byte - UInt8(ascii: "0") + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return -1
            }
            accumulator = accumulator << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output[written] = UInt8(truncatingIfNeeded: accumulator >> UInt32(bits))
                written += 1
            }
        }
        return written
    }
}

/// A keyed HMAC that is only ever copied, never changed in place: each copy's updates copy its
/// hash state first (swift-crypto's hash states are copy-on-write), so sharing it across
/// threads is safe.
private struct KeyedHMAC: @unchecked Sendable {
    let hmac: HMAC<SHA256>
    init(_ hmac: HMAC<SHA256>) { self.hmac = hmac }
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

    /// Decodes base64url with or without padding.
    public init?(base64URL: String) {
        var text = base64URL
        let decoded = text.withUTF8 { utf8 -> [UInt8]? in
            var bytes = [UInt8](repeating: 0, count: utf8.count * 3 / 4 + 1)
            let count = bytes.withUnsafeMutableBufferPointer { Base64URL.decode(utf8, into: $0) }
            return count < 0 ? nil : Array(bytes.prefix(count))
        }
        guard let decoded else { return nil }
        self.init(decoded)
    }
}
