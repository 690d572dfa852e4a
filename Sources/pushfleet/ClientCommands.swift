import ArgumentParser
import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Options of commands that call the control API.
struct APIOptions: ParsableArguments {
    @Option(help: "Control API base URL (env PUSHFLEET_API; default http://127.0.0.1:8080).")
    var api: String?

    @Option(help: "API key, sent as 'Authorization: Bearer KEY' (env PUSHFLEET_API_KEY).")
    var apiKey: String?

    var base: String { api ?? env("API") ?? "http://127.0.0.1:8080" }

    /// Sends a request to the API; the status (0: no answer) and body.
    func call(_ method: String, _ path: String, body: [String: Any]? = nil) async throws -> (status: Int, data: Data) {
        guard let url = URL(string: base + path) else { throw ValidationError("bad --api URL \(base)") }
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.timeoutInterval = 10
        if let key = apiKey ?? env("API_KEY") { request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization") }
        if let body {
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.httpBody = try JSONSerialization.data(withJSONObject: body)
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, data)
    }

    /// POSTs `body` as JSON and returns the response body; fails with a one-line message on a
    /// non-2xx status or when the API cannot be reached.
    func post(_ path: String, _ body: [String: Any]) async throws -> Data {
        let status: Int
        let data: Data
        do {
            (status, data) = try await call("POST", path, body: body)
        } catch let error as ValidationError {
            throw error
        } catch {
            Self.fail("cannot reach the control API at \(base): \(error.localizedDescription)")
        }
        guard (200..<300).contains(status) else {
            // The API's errors are {"error":{"code","message"}}: say them plainly.
            let error = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["error"] as? [String: Any]
            let detail = (error?["message"] as? String).map { "\($0) (\(error?["code"] as? String ?? ""))" }
            Self.fail("HTTP \(status): \(detail ?? String(decoding: data, as: UTF8.self))")
        }
        return data
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("pushfleet: \(message)\n".utf8))
        Foundation.exit(1)
    }
}

struct PushClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Push a message through the control API and print its id."
    )

    @OptionGroup var options: APIOptions

    @Option(help: "Comma separated terminal ids.")
    var to: String?

    @Option(help: "Topic: every online terminal subscribed to a matching filter.")
    var topic: String?

    @Flag(help: "Every online terminal (topic 'broadcast').")
    var broadcast = false

    @Option(help: "QoS 0, 1 or 2 (default 1).")
    var qos: Int = 1

    @Option(help: "Seconds the message waits for offline terminals; 0 = online only (default 86400).")
    var ttl: Int = 86_400

    @Option(help: "Idempotency key: a retry with the same key never creates a second message.")
    var idempotencyKey: String?

    @Argument(help: "The message payload (text).")
    var message: String

    func validate() throws {
        let given = [to != nil, topic != nil, broadcast].filter { $0 }.count
        guard given == 1 else { throw ValidationError("give exactly one of --to, --topic or --broadcast") }
    }

    func run() async throws {
        var body: [String: Any] = ["payload": message, "qos": qos, "ttl": ttl]
        if let to { body["to"] = to.split(separator: ",").map(String.init) }
        if let topic { body["topic"] = topic }
        if broadcast { body["broadcast"] = true }
        if let idempotencyKey { body["idempotencyKey"] = idempotencyKey }
        let answer = try await options.post("/v1/push", body)
        let id = (try? JSONSerialization.jsonObject(with: answer) as? [String: Any])?["id"] as? String
        print(id ?? String(decoding: answer, as: UTF8.self))
    }
}

struct CredentialCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "credential",
        abstract: "Issue a credential for a terminal and print it (JSON)."
    )

    @OptionGroup var options: APIOptions

    @Option(help: "Lifetime in seconds (default 86400).")
    var ttl: Int = 86_400

    @Argument(help: "The terminal id.")
    var terminal: String

    func run() async throws {
        print(String(decoding: try await options.post("/v1/credentials", ["terminal": terminal, "ttl": ttl]), as: UTF8.self))
    }
}
