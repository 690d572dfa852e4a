import FleetTestSupport
import Glibc
import NIOCore
import NIOEmbedded
import Testing

@testable import PushNode

/// The PROXY protocol header (versions 1 and 2) a load balancer sends before the terminal's
/// bytes, read as `--proxy-protocol` reads it.
struct ProxyProtocolTests {
    func read(_ bytes: [UInt8]) throws(ProxyHeader.Failure) -> (ProxyHeader?, rest: [UInt8]) {
        var buffer = ByteBuffer(bytes: bytes)
        let header = try ProxyHeader.read(from: &buffer)
        return (header, Array(buffer.readableBytesView))
    }

    func v2(command: UInt8 = 1, family: UInt8, addresses: [UInt8], tlvs: [UInt8] = []) -> [UInt8] {
        let body = addresses + tlvs
        return ProxyHeader.v2Signature + [0x20 | command, family, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    let connect: [UInt8] = [0x10, 0x0C, 0x00, 0x04]  // the start of an MQTT CONNECT

    @Test func versionOneNamesTheClientAndLeavesWhatFollows() throws {
        let (header, rest) = try read(Array("PROXY TCP4 203.0.113.7 10.0.0.1 54321 1883\r\n".utf8) + connect)
        #expect(header == .proxied(source: PeerAddress(text: "203.0.113.7", family: AF_INET, port: 54321)))
        #expect(rest == connect)
        #expect("\(PeerAddress(text: "203.0.113.7", family: AF_INET, port: 54321)!)" == "203.0.113.7:54321")
        let (v6, _) = try read(Array("PROXY TCP6 2001:db8::1 2001:db8::2 65535 1883\r\n".utf8))
        #expect(v6.map { "\($0)" } == "proxied(source: Optional([2001:db8::1]:65535))")
        #expect(try read(Array("PROXY UNKNOWN\r\n".utf8)).0 == .proxied(source: nil))
        #expect(try read(Array("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".utf8)).0 == .proxied(source: nil))
    }

    /// Without a PROXY header the address is the socket's own.
    @Test func socketAddresses() throws {
        #expect(PeerAddress(try SocketAddress(ipAddress: "203.0.113.7", port: 1883)).map { "\($0)" } == "203.0.113.7:1883")
        #expect(PeerAddress(try SocketAddress(ipAddress: "2001:db8::5", port: 80)).map { "\($0)" } == "[2001:db8::5]:80")
        #expect(PeerAddress(nil) == nil)
    }

    @Test func versionOneRefusesWhatIsNotAHeader() {
        for line in [
            "PROXY TCP4 203.0.113.7 10.0.0.1 54321 1883\n",  // no CR
            "PROXY TCP4 203.0.113 10.0.0.1 54321 1883\r\n",  // bad address
            "PROXY TCP4 2001:db8::1 10.0.0.1 54321 1883\r\n",  // IPv6 under TCP4
            "PROXY TCP4 203.0.113.7 10.0.0.1 65536 1883\r\n",  // port out of range
            "PROXY TCP4 203.0.113.7 10.0.0.1 0123 1883\r\n",  // leading zero
            "PROXY TCP4 203.0.113.7 10.0.0.1 -1 1883\r\n",
            "PROXY TCP4 203.0.113.7 10.0.0.1 54321\r\n",  // a field missing
            "PROXY TCP4  203.0.113.7 10.0.0.1 54321 1883\r\n",  // two spaces
            "PROXY UDP4 203.0.113.7 10.0.0.1 54321 1883\r\n",
        ] {
            #expect(throws: ProxyHeader.Failure.self, "\(line)") { _ = try read(Array(line.utf8)) }
        }
        #expect(throws: ProxyHeader.Failure.notProxyProtocol) { _ = try read(connect) }
        #expect(throws: ProxyHeader.Failure.notProxyProtocol) { _ = try read(Array("PROXX".utf8)) }
    }

    /// The longest line version 1 allows (107 bytes with its CRLF) is read; one byte more is
    /// refused, before its end arrives.
    @Test func versionOneLineBound() throws {
        let longest = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        #expect(longest.utf8.count == ProxyHeader.maximumV1Length)
        #expect(try read(Array(longest.utf8)).0 != nil)
        let tooLong = "PROXY UNKNOWN " + String(repeating: "x", count: ProxyHeader.maximumV1Length - 15) + "\r\n"
        #expect(tooLong.utf8.count == ProxyHeader.maximumV1Length + 1)
        #expect(throws: ProxyHeader.Failure.tooLong) { _ = try read(Array(tooLong.utf8)) }
        // Without a line end yet: more is needed until the bound, then it is refused.
        #expect(try read(Array(tooLong.utf8.prefix(ProxyHeader.maximumV1Length - 1))).0 == nil)
        #expect(throws: ProxyHeader.Failure.tooLong) { _ = try read(Array(tooLong.utf8.prefix(ProxyHeader.maximumV1Length))) }
    }

    @Test func versionTwoAddressesLocalAndTLVs() throws {
        let ipv4 = v2(
            family: 0x11, addresses: [203, 0, 113, 7, 10, 0, 0, 1, 0xD4, 0x31, 0x07, 0x5B], tlvs: [0x05, 0x00, 0x02, 0xAB, 0xCD])
        let (header, rest) = try read(ipv4 + connect)
        #expect(header == .proxied(source: PeerAddress(ipv4: [203, 0, 113, 7], port: 54321)))
        #expect(rest == connect)
        let ipv6 = v2(
            family: 0x21,
            addresses: [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1] + [UInt8](repeating: 0, count: 16) + [
                0xFF, 0xFF, 0x07, 0x5B,
            ])
        #expect(try read(ipv6).0.map { "\($0)" } == "proxied(source: Optional([2001:db8::1]:65535))")
        #expect(try read(v2(command: 0, family: 0x00, addresses: [])).0 == .local)
        #expect(try read(v2(family: 0x31, addresses: [UInt8](repeating: 0, count: 216))).0 == .proxied(source: nil))
        #expect(throws: ProxyHeader.Failure.self) { _ = try read(v2(family: 0x11, addresses: [1, 2, 3])) }
        #expect(throws: ProxyHeader.Failure.self) {
            _ = try read(v2(command: 2, family: 0x11, addresses: [UInt8](repeating: 0, count: 12)))
        }
        var version1 = v2(family: 0x11, addresses: [UInt8](repeating: 0, count: 12))
        version1[12] = 0x11
        #expect(throws: ProxyHeader.Failure.self) { _ = try read(version1) }
        // In pieces: nothing is taken until the whole header is there.
        for end in 0..<ipv4.count { #expect(try read(Array(ipv4.prefix(end))).0 == nil) }
    }

    /// A version 2 header of the largest length taken is read; one byte longer is refused as
    /// soon as its length field says so.
    @Test func versionTwoLengthBound() throws {
        let addresses: [UInt8] = [203, 0, 113, 7, 10, 0, 0, 1, 0, 1, 0, 2]
        let padding = ProxyHeader.maximumLength - 16 - addresses.count
        let largest = v2(family: 0x11, addresses: addresses, tlvs: [UInt8](repeating: 0, count: padding))
        #expect(largest.count == ProxyHeader.maximumLength)
        #expect(try read(largest).0 == .proxied(source: PeerAddress(ipv4: [203, 0, 113, 7], port: 1)))
        let tooLong = v2(family: 0x11, addresses: addresses, tlvs: [UInt8](repeating: 0, count: padding + 1))
        #expect(throws: ProxyHeader.Failure.tooLong) { _ = try read(Array(tooLong.prefix(16))) }
    }

    /// In a pipeline: the header is taken off, the address kept, the bytes after it passed on
    /// and the handler gone; a connection without a header is closed.
    @Test func theHandlerPassesTheRestOnAndLeaves() throws {
        let peer = ProxiedPeer()
        let channel = EmbeddedChannel(handler: ProxyProtocolHandler(peer: peer) { _, _ in })
        let header = Array("PROXY TCP4 198.51.100.2 10.0.0.1 40000 1883\r\n".utf8)
        try channel.writeInbound(ByteBuffer(bytes: header.prefix(10)))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        try channel.writeInbound(ByteBuffer(bytes: header.dropFirst(10) + connect))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: connect))
        #expect(peer.address.map { "\($0)" } == "198.51.100.2:40000")
        #expect(throws: (any Error).self) { try channel.pipeline.syncOperations.handler(type: ProxyProtocolHandler.self) }
        try channel.writeInbound(ByteBuffer(bytes: [0x20]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: [0x20]))

        let refused = EmbeddedChannel(handler: ProxyProtocolHandler(peer: ProxiedPeer()) { _, _ in })
        try refused.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try refused.writeInbound(ByteBuffer(bytes: connect))
        #expect(!refused.isActive)
    }

    @Test(arguments: 0..<2_000)
    func randomInputsKeepTheReaderContract(seed: Int) {
        var generator = SystemRandomNumberGenerator()
        let base: [UInt8] =
            switch seed % 3 {
            case 0: Array("PROXY TCP4 203.0.113.7 10.0.0.1 54321 1883\r\n".utf8)
            case 1: v2(family: 0x11, addresses: [203, 0, 113, 7, 10, 0, 0, 1, 0xD4, 0x31, 0x07, 0x5B])
            default: v2(family: 0x21, addresses: [UInt8](repeating: 1, count: 36))
            }
        var input = [UInt8(seed % 256)] + base + connect
        for _ in 0..<(seed % 4) {
            input[Int.random(in: 1..<input.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
        }
        #expect(PushNodeFuzzing.proxyHeader(input) == [])
    }
}

/// The fuzzer's corpus of PROXY headers, and every input that once broke the reader.
struct ProxyHeaderFuzzCorpusTests {
    @Test func corpusAndRegressionsKeepTheContract() throws {
        let corpus = try FuzzInputs.read("corpus/proxy-header")
        #expect(corpus.count >= 8, "the committed corpus")
        for (name, input) in corpus + (try FuzzInputs.read("regressions/proxy-header")) {
            #expect(PushNodeFuzzing.proxyHeader(input).isEmpty, "proxy-header/\(name)")
        }
    }
}
