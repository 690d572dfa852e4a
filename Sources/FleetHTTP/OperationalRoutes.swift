import Hummingbird

/// `/healthz`, `/readyz` and `/metrics`, served by control nodes and by push nodes' admin port.
/// They answer without the API key.
public enum OperationalRoutes {
    /// Adds the routes. `ready` decides `/readyz` (200 or 503); `metrics` renders Prometheus text.
    public static func add<Context: RequestContext>(
        to router: Router<Context>,
        ready: @escaping @Sendable () async -> Bool,
        metrics: @escaping @Sendable () -> [UInt8]
    ) {
        router.get("/healthz") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
        }
        router.get("/readyz") { _, _ in
            let isReady = await ready()
            return Response(
                status: isReady ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"],
                body: .init(
                    byteBuffer: ByteBuffer(
                        string: isReady ? #"{"status":"ready"}"# : #"{"status":"not ready","reason":"redis unavailable"}"#))
            )
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(bytes: metrics()))
            )
        }
    }
}
