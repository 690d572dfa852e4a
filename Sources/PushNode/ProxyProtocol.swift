import Glibc
import NIOCore

/// A terminal's address as a value (no allocation per connection): formatted only when
/// something is logged.
struct PeerAddress: Hashable, Sendable, CustomStringConvertible {
    private enum Host: Hashable, Sendable {
        case v4(UInt32)
        case v6(UInt64, UInt64)
    }

    private let host: Host
    let port: UInt16

    private init(host: Host, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// An IPv4 address from its 4 bytes in network order.
    init(ipv4 bytes: some Collection<UInt8>, port: UInt16) {
        host = .v4(bytes.reduce(0) { $0 << 8 | UInt32($1) })
        self.port = port
    }

    /// An IPv6 address from its 16 bytes in network order.
    init(ipv6 bytes: some Collection<UInt8>, port: UInt16) {
        let high = bytes.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let low = bytes.dropFirst(8).prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        host = .v6(high, low)
        self.port = port
    }

    /// The address of a socket NIO reports (nil for a Unix socket).
    init?(_ address: SocketAddress?) {
        switch address {
        case .v4(let v4):
            // Read in place: this runs for every connection.
            self.init(host: .v4(UInt32(bigEndian: v4.address.sin_addr.s_addr)), port: UInt16(address?.port ?? 0))
        case .v6(let v6):
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            self.init(ipv6: bytes, port: UInt16(address?.port ?? 0))
        default:
            return nil
        }
    }

    /// Parses the text form of an IPv4 (`family` AF_INET) or IPv6 (AF_INET6) address.
    init?(text: Substring, family: Int32, port: UInt16) {
        var storage = in6_addr()
        let parsed = String(text).withCString { inet_pton(family, $0, &storage) }
        guard parsed == 1 else { return nil }
        let bytes = withUnsafeBytes(of: storage) { Array($0) }
        if family == AF_INET { self.init(ipv4: bytes.prefix(4), port: port) } else { self.init(ipv6: bytes, port: port) }
    }

    var description: String {
        switch host {
        case .v4(let raw):
            return "\(raw >> 24).\(raw >> 16 & 0xFF).\(raw >> 8 & 0xFF).\(raw & 0xFF):\(port)"
        case .v6(let high, let low):
            var bytes: [UInt8] = []
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: high >> UInt64(shift))) }
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: low >> UInt64(shift))) }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
            _ = inet_ntop(AF_INET6, &address, &text, socklen_t(text.count))
            let host = text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            return "[\(host)]:\(port)"
        }
    }
}

/// The PROXY protocol header a load balancer (HAProxy `send-proxy`, `send-proxy-v2`; AWS NLB,
/// and others) sends before the client's bytes, saying whose connection it is
/// (https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt). Versions 1 (text) and 2
/// (binary) are told apart by their first bytes.
enum ProxyHeader: Equatable {
    /// The connection is a client's, from `source` (nil: the balancer did not know, `UNKNOWN`
    /// or an address family other than IPv4 and IPv6).
    case proxied(source: PeerAddress?)
    /// The balancer's own connection (version 2 `LOCAL`: a health check): no client address.
    case local

    enum Failure: Error, Equatable {
        /// The bytes are not a PROXY header.
        case notProxyProtocol
        /// A header, but malformed.
        case malformed(String)
        /// Longer than ``maximumLength``.
        case tooLong
    }

    /// Version 1's longest line (section 2.1), CRLF included.
    static let maximumV1Length = 107
    /// The longest version 2 header taken: 16 bytes, the addresses (at most 216 for Unix
    /// sockets) and the balancer's TLVs (HAProxy's SSL and unique-id TLVs fit in far less).
    static let maximumLength = 2_048

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Prefix = Array("PROXY ".utf8)

    /// Reads a header from the start of `buffer`: nil when more bytes are needed (the bytes read
    /// stay in `buffer`), otherwise the header with the buffer moved past it.
    static func read(from buffer: inout ByteBuffer) throws(Failure) -> ProxyHeader? {
        let available = buffer.readableBytesView
        guard let first = available.first else { return nil }
        if first == v2Signature[0] { return try readV2(from: &buffer) }
        if first == v1Prefix[0] { return try readV1(from: &buffer) }
        throw .notProxyProtocol
    }

    private static func readV1(from buffer: inout ByteBuffer) throws(Failure) -> ProxyHeader? {
        let view = buffer.readableBytesView
        guard view.starts(with: v1Prefix.prefix(view.count)) else { throw .notProxyProtocol }
        guard let lineFeed = view.prefix(maximumV1Length).firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count >= maximumV1Length { throw .tooLong }
            return nil
        }
        let length = lineFeed - view.startIndex + 1
        guard length >= 2, view[lineFeed - 1] == UInt8(ascii: "\r") else { throw .malformed("line not ended by CRLF") }
        let line = String(decoding: view.prefix(length - 2), as: UTF8.self)
        buffer.moveReaderIndex(forwardBy: length)
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count >= 2, fields[0] == "PROXY" else { throw .malformed("no protocol") }
        switch fields[1] {
        case "UNKNOWN":
            return .proxied(source: nil)
        case "TCP4", "TCP6":
            guard fields.count == 6 else { throw .malformed("\(fields.count) fields") }
            let family = fields[1] == "TCP4" ? AF_INET : AF_INET6
            guard let sourcePort = port(fields[4]), port(fields[5]) != nil else { throw .malformed("bad port") }
            guard let source = PeerAddress(text: fields[2], family: family, port: sourcePort),
                PeerAddress(text: fields[3], family: family, port: 0) != nil
            else { throw .malformed("bad address") }
            return .proxied(source: source)
        default:
            throw .malformed("protocol \(fields[1])")
        }
    }

    /// A port in version 1: decimal, no sign, no leading zero, 0-65535.
    private static func port(_ text: Substring) -> UInt16? {
        guard !text.isEmpty, text.count <= 5, text.allSatisfy(\.isASCII), text.allSatisfy(\.isNumber),
            text == "0" || text.first != "0"
        else { return nil }
        return UInt16(text)
    }

    private static func readV2(from buffer: inout ByteBuffer) throws(Failure) -> ProxyHeader? {
        let view = buffer.readableBytesView
        guard view.starts(with: v2Signature.prefix(view.count)) else { throw .notProxyProtocol }
        guard view.count >= 16 else { return nil }
        let start = view.startIndex
        let versionCommand = view[start + 12]
        let familyProtocol = view[start + 13]
        let length = Int(view[start + 14]) << 8 | Int(view[start + 15])
        guard versionCommand >> 4 == 2 else { throw .malformed("version \(versionCommand >> 4)") }
        guard 16 + length <= maximumLength else { throw .tooLong }
        guard view.count >= 16 + length else { return nil }
        let body = view[(start + 16)..<(start + 16 + length)]
        buffer.moveReaderIndex(forwardBy: 16 + length)
        switch versionCommand & 0x0F {
        case 0:
            return .local
        case 1:
            break
        default:
            throw .malformed("command \(versionCommand & 0x0F)")
        }
        switch familyProtocol >> 4 {
        case 1:  // AF_INET: source, destination, source port, destination port
            guard body.count >= 12 else { throw .malformed("short IPv4 addresses") }
            let port = UInt16(body[body.startIndex + 8]) << 8 | UInt16(body[body.startIndex + 9])
            return .proxied(source: PeerAddress(ipv4: body.prefix(4), port: port))
        case 2:  // AF_INET6
            guard body.count >= 36 else { throw .malformed("short IPv6 addresses") }
            let port = UInt16(body[body.startIndex + 32]) << 8 | UInt16(body[body.startIndex + 33])
            return .proxied(source: PeerAddress(ipv6: body.prefix(16), port: port))
        case 0, 3:  // unspecified, Unix socket: no address to report
            return .proxied(source: nil)
        default:
            throw .malformed("address family \(familyProtocol >> 4)")
        }
    }
}

/// Where a connection's ``ProxyProtocolHandler`` leaves the address it read, for the MQTT
/// handler that comes after it (which, for WebSocket, is added only after the upgrade).
final class ProxiedPeer: @unchecked Sendable {
    /// Set once on the channel's event loop, read there.
    var address: PeerAddress?
}

/// First in a connection's pipeline under `--proxy-protocol`: reads the PROXY header (within
/// the connection's deadline, which the handlers after it keep), records the client's address,
/// passes the bytes after it on and leaves the pipeline. A connection that does not start with
/// a valid header is closed: with `--proxy-protocol` only the load balancer may connect.
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let peer: ProxiedPeer
    private var buffered: ByteBuffer?
    private let onRefused: @Sendable (ProxyHeader.Failure, SocketAddress?) -> Void

    init(peer: ProxiedPeer, onRefused: @escaping @Sendable (ProxyHeader.Failure, SocketAddress?) -> Void) {
        self.peer = peer
        self.onRefused = onRefused
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if var earlier = buffered.take() {
            earlier.writeBuffer(&bytes)
            bytes = earlier
        }
        let header: ProxyHeader?
        do {
            header = try ProxyHeader.read(from: &bytes)
        } catch {
            onRefused(error, context.remoteAddress)
            context.close(promise: nil)
            return
        }
        guard let header else {
            buffered = bytes
            return
        }
        if case .proxied(let source) = header { peer.address = source }
        // What came after the header first, then out of the way for good.
        if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(bytes)) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

extension Optional {
    fileprivate mutating func take() -> Wrapped? {
        defer { self = nil }
        return self
    }
}
