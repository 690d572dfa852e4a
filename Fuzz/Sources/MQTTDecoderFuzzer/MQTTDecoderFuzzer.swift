import MQTTCodec
import NIOCore

/// libFuzzer's entry point: the first byte picks the protocol version, the rest is a byte
/// stream from a peer. Every packet the decoder accepts must encode again and decode to the
/// same packet; anything else the decoder does with hostile bytes must be a thrown error or
/// "need more bytes", never a crash or a hang.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    guard let first = bytes.first else { return 0 }
    let version: MQTTProtocolVersion = first & 1 == 0 ? .v3_1_1 : .v5
    var buffer = ByteBuffer(bytes: bytes.dropFirst())
    while true {
        let packet: MQTTPacket
        do {
            guard let decoded = try MQTTPacket.read(from: &buffer, version: version, maximumPacketSize: 1 << 20) else { break }
            packet = decoded
        } catch {
            break
        }
        var encoded = ByteBuffer()
        guard (try? packet.write(to: &encoded, version: version)) != nil else { continue }
        guard let again = try? MQTTPacket.read(from: &encoded, version: version, maximumPacketSize: 1 << 21) else {
            fatalError("a decoded packet did not decode again after encoding: \(packet)")
        }
        if again != packet { fatalError("round trip changed the packet: \(packet) -> \(again)") }
    }
    return 0
}

/// libFuzzer's driver (`LLVMFuzzerRunDriver`, in libFuzzer since LLVM 11).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafeRawPointer, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point as `<target>_main`: hand over to libFuzzer.
@_cdecl("MQTTDecoderFuzzer_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { start, size in fuzz(start, size) }
}
