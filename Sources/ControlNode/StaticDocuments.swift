import HTTPTypes
import Hummingbird

/// Documents the control node serves as they are in the repository (compiled in by SwiftPM's
/// `embedInCode`): `/openapi.json`, the API's description, and the admin page at `/ui`, which
/// calls the API with the key its user enters. Open, as `/healthz` is: they hold no data.
enum StaticDocuments {
    static func add(to router: Router<BasicRequestContext>) {
        serve(PackageResources.openapi_json, at: "/openapi.json", type: "application/json", on: router)
        serve(PackageResources.index_html, at: "/ui", type: "text/html; charset=utf-8", on: router)
        serve(PackageResources.ui_js, at: "/ui/ui.js", type: "text/javascript; charset=utf-8", on: router)
        serve(PackageResources.ui_css, at: "/ui/ui.css", type: "text/css; charset=utf-8", on: router)
    }

    /// The page may load only its own script and style and call only this node: nothing an
    /// injected string could make it fetch or run elsewhere.
    private static let policy =
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

    private static func serve(_ bytes: [UInt8], at path: RouterPath, type: String, on router: Router<BasicRequestContext>) {
        let body = ByteBuffer(bytes: bytes)
        router.get(path) { _, _ in
            Response(
                status: .ok,
                headers: [
                    .contentType: type, .contentSecurityPolicy: policy, .xContentTypeOptions: "nosniff", .cacheControl: "no-cache",
                    HTTPField.Name("Referrer-Policy")!: "no-referrer",
                ],
                body: .init(byteBuffer: body))
        }
    }
}
