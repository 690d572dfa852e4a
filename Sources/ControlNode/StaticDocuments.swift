import Hummingbird

/// Documents the control node serves as they are in the repository (compiled in by SwiftPM's
/// `embedInCode`): `/openapi.json`, the API's description. Open, as `/healthz` is.
enum StaticDocuments {
    static func add(to router: Router<BasicRequestContext>) {
        let openAPI = ByteBuffer(bytes: PackageResources.openapi_json)
        router.get("/openapi.json") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: openAPI))
        }
    }
}
