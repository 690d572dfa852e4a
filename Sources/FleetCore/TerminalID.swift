/// Rules for terminal ids: the MQTT client id, username and Redis key component.
public enum TerminalID {
    /// The longest terminal id accepted.
    public static let maximumLength = 128

    /// Whether `id` is a valid terminal id: 1 to 128 of `A-Z a-z 0-9 _ - . : @`.
    ///
    /// Braces, slashes, spaces and wildcards are excluded so an id can sit inside a Redis hash
    /// tag and an MQTT topic (`push/<id>`) unchanged.
    public static func isValid(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty, utf8.count <= maximumLength else { return false }
        return utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            case UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: ":"), UInt8(ascii: "@"):
                return true
            default:
                return false
            }
        }
    }

    /// A valid terminal id standing for a client id that is not one (anonymous mode takes
    /// any MQTT client id): `~` and the id's UTF-8 bytes in hex.
    public static func escaped(_ clientID: String) -> String {
        "~" + clientID.utf8.map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }.joined()
    }
}
