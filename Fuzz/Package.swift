// swift-tools-version:6.0
// Coverage-guided fuzzing of the MQTT decoder (libFuzzer). Not part of the main build: see
// scripts/fuzz, which builds this package with -sanitize=fuzzer and runs it.
import PackageDescription

let package = Package(
    name: "pushfleet-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .executableTarget(
            name: "MQTTDecoderFuzzer",
            dependencies: [.product(name: "MQTTCodec", package: "main")],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    ]
)
