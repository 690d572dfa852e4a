// swift-tools-version:6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "pushfleet",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "pushfleet", targets: ["pushfleet"]),
        .library(name: "MQTTCodec", targets: ["MQTTCodec"]),
        .library(name: "FleetCore", targets: ["FleetCore"]),
        .library(name: "RedisClient", targets: ["RedisClient"]),
        .library(name: "PushNode", targets: ["PushNode"]),
        .library(name: "ControlNode", targets: ["ControlNode"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "MQTTCodec",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RedisClient",
            dependencies: [
                "CHiredis",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The domain: ids, keys, stored messages and node events, the topic trie, credentials.
        .target(
            name: "FleetCore",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The fleet's Redis side both kinds of node share: Lua scripts, topic routing, status writes.
        .target(
            name: "FleetRedis",
            dependencies: [
                "FleetCore", "RedisClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // `/healthz`, `/readyz`, `/metrics` for both kinds of node.
        .target(
            name: "FleetHTTP",
            dependencies: [.product(name: "Hummingbird", package: "hummingbird")],
            swiftSettings: swiftSettings
        ),
        // Heap figures from the C library (glibc mallinfo2) for /metrics.
        .target(name: "CHeapInfo"),
        // A redis-server child process: for `pushfleet dev` and the tests, never linked by a node.
        .target(
            name: "LocalRedis",
            dependencies: [.product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "PushNode",
            dependencies: [
                "MQTTCodec", "RedisClient", "FleetCore", "FleetRedis", "FleetHTTP",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ControlNode",
            dependencies: [
                "RedisClient", "FleetCore", "FleetRedis", "FleetHTTP", "MQTTCodec",
                .product(name: "Hummingbird", package: "hummingbird"),
                // The status webhook's HTTP client (http and https).
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // Compiled into the binary (no file to ship next to it): the API description and the
            // admin page, served as they are in the repository.
            resources: [
                .embedInCode("Resources/openapi.json"), .embedInCode("Resources/ui/index.html"), .embedInCode("Resources/ui/ui.js"),
                .embedInCode("Resources/ui/ui.css"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "BenchKit",
            dependencies: [
                "MQTTCodec", "RedisClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "pushfleet",
            dependencies: [
                "PushNode", "ControlNode", "FleetCore", "FleetRedis", "LocalRedis", "RedisClient", "MQTTCodec", "BenchKit", "CHeapInfo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MQTTCodecTests",
            dependencies: [
                "MQTTCodec", "FleetTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .target(
            name: "FleetTestSupport",
            dependencies: [
                "FleetCore", "LocalRedis", "RedisClient",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/FleetTestSupport"
        ),
        .testTarget(
            name: "RedisClientTests",
            dependencies: ["RedisClient", "FleetTestSupport", .product(name: "NIOPosix", package: "swift-nio")]
        ),
        .testTarget(
            name: "FleetCoreTests",
            dependencies: [
                "FleetCore", "FleetRedis", "MQTTCodec", "RedisClient", "FleetTestSupport", .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "PushNodeTests",
            dependencies: [
                "PushNode", "FleetCore", "MQTTCodec", "RedisClient", "FleetTestSupport", .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "BenchKitTests",
            dependencies: [
                "BenchKit", "PushNode", "FleetCore", "FleetRedis", "MQTTCodec", "RedisClient", "FleetTestSupport",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "MessagePathTests",
            dependencies: [
                "ControlNode", "PushNode", "FleetCore", "FleetRedis", "MQTTCodec", "RedisClient", "FleetTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "ControlNodeTests",
            dependencies: [
                "ControlNode", "FleetCore", "FleetRedis", "RedisClient", "FleetTestSupport",
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)
