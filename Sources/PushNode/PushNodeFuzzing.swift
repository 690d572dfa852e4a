import NIOCore

/// Entry point for coverage-guided fuzzing (`Fuzz/`, `scripts/fuzz`) and the tests that replay
/// its corpus. Not for other use.
public enum PushNodeFuzzing {
    /// A connection's first bytes under `--proxy-protocol`, arriving in pieces (the first byte
    /// picks the piece size). The reader must answer the same for the whole input as for it
    /// in pieces; consume nothing while it needs more bytes, and never more than it was given;
    /// and take no header longer than its bounds. Returns the ways the contract broke.
    public static func proxyHeader(_ input: [UInt8]) -> [String] {
        guard let first = input.first else { return [] }
        let bytes = Array(input.dropFirst())
        var problems: [String] = []
        var whole = ByteBuffer(bytes: bytes)
        let wholeResult = Result { () throws(ProxyHeader.Failure) in try ProxyHeader.read(from: &whole) }
        if case .success(.some) = wholeResult {
            let used = bytes.count - whole.readableBytes
            if used > ProxyHeader.maximumLength { problems.append("took a header of \(used) bytes") }
        }
        // The same bytes, fed as a connection would receive them.
        let step = Int(first % 16) + 1
        var buffer = ByteBuffer()
        var offset = 0
        var pieceResult: Result<ProxyHeader?, ProxyHeader.Failure> = .success(nil)
        while offset < bytes.count {
            let end = min(bytes.count, offset + step)
            buffer.writeBytes(bytes[offset..<end])
            offset = end
            let before = buffer.readableBytes
            pieceResult = Result { () throws(ProxyHeader.Failure) in try ProxyHeader.read(from: &buffer) }
            switch pieceResult {
            case .success(nil):
                if buffer.readableBytes != before { problems.append("consumed bytes while it needed more") }
                continue
            case .success(.some), .failure:
                break
            }
            break
        }
        switch (wholeResult, pieceResult) {
        case (.success(let a), .success(let b)) where a == b:
            if a != nil, whole.readableBytes != buffer.readableBytes + (bytes.count - offset) {
                problems.append("left different bytes after the header in pieces")
            }
        case (.failure, .failure):
            break
        default:
            problems.append("whole: \(wholeResult), in pieces: \(pieceResult)")
        }
        return problems
    }
}
