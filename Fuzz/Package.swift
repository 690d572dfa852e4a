// swift-tools-version:6.0
// Coverage-guided fuzzing (libFuzzer) of what parses untrusted bytes: the MQTT decoder, API
// request bodies, command stream entries, the JSON nodes read from Redis, PROXY protocol headers. Not part of the
// main build: see scripts/fuzz, which builds this package with -sanitize=fuzzer and runs it.
import PackageDescription

let package = Package(
    name: "pushfleet-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .executableTarget(
            name: "PushFleetFuzzer",
            dependencies: [
                .product(name: "MQTTCodec", package: "main"),
                .product(name: "ControlNode", package: "main"),
                .product(name: "PushNode", package: "main"),
            ],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    ]
)
