import ControlNode
import FleetCore
import Foundation
import MQTTCodec
import PushNode

/// The parsers fuzzed, by the name `scripts/fuzz` passes in `PUSHFLEET_FUZZ_TARGET` (also
/// the name of each one's corpus and regression folders). Each returns how the parser broke
/// its contract on an input; a crash, a hang or a non-empty answer is a finding.
let targets: [String: @Sendable ([UInt8]) -> [String]] = [
    "mqtt-decoder": { MQTTCodecFuzzing.decoder($0).problems },
    "api-request": ControlNodeFuzzing.apiRequest,
    "command-stream": ControlNodeFuzzing.commandStreamEntry,
    "redis-json": FleetCoreFuzzing.redisJSON,
    "proxy-header": PushNodeFuzzing.proxyHeader,
]

nonisolated(unsafe) var selected: ([UInt8]) -> [String] = { _ in [] }

/// libFuzzer's entry point.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let problems = selected(Array(UnsafeRawBufferPointer(start: start, count: count)))
    if let problem = problems.first { fatalError(problem) }
    return 0
}

/// libFuzzer's driver (`LLVMFuzzerRunDriver`, in libFuzzer since LLVM 11).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafeRawPointer, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point as `<target>_main`: pick the target, hand over
/// to libFuzzer.
@_cdecl("PushFleetFuzzer_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    let name = ProcessInfo.processInfo.environment["PUSHFLEET_FUZZ_TARGET"] ?? ""
    guard let target = targets[name] else {
        FileHandle.standardError.write(Data("PUSHFLEET_FUZZ_TARGET must be one of \(targets.keys.sorted())\n".utf8))
        return 2
    }
    selected = target
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { start, size in fuzz(start, size) }
}
