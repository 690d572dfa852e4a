import Foundation
import Hummingbird
import RedisClient

/// An API error: HTTP status plus the JSON body `{"error":{"code","message"}}`.
public struct APIError: Error, HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    /// Seconds for a `Retry-After` header (503 while Redis is unreachable).
    public var retryAfter: Int?
    /// The methods for an `Allow` header (405).
    public var allow: [String]?

    public init(_ status: HTTPResponse.Status, _ code: String, _ message: String, retryAfter: Int? = nil, allow: [String]? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
        self.allow = allow
    }

    static func badRequest(_ message: String) -> APIError { APIError(.badRequest, "invalid_request", message) }
    static func notFound(_ message: String) -> APIError { APIError(.notFound, "not_found", message) }

    /// Maps any error thrown by a handler to the API's error shape.
    static func from(_ error: any Error) -> APIError {
        switch error {
        case let error as APIError:
            return error
        case let error as NotReplicated:
            return APIError(
                .serviceUnavailable, "not_replicated",
                "\(error): not accepted; retry with the same idempotencyKey to store it once",
                retryAfter: 1)
        case let error as RedisError where error.code == .server && error.isTransient:
            // A failover or a restart under way: the same request succeeds shortly.
            return APIError(
                .serviceUnavailable, "unavailable", "storage is not writable right now, retry later (\(error.message))", retryAfter: 1)
        case let error as RedisError where error.code == .server || error.code == .unexpectedReply:
            return APIError(.internalServerError, "internal", "storage error: \(error.message)")
        case let error as RedisError:
            return APIError(.serviceUnavailable, "unavailable", "storage is unreachable, retry later (\(error.code))", retryAfter: 1)
        case let error as HTTPError:
            let code: String
            switch error.status.code {
            case 404: code = "not_found"
            case 405: code = "method_not_allowed"
            case 413: code = "payload_too_large"
            default: code = error.status.code < 500 ? "invalid_request" : "internal"
            }
            return APIError(error.status, code, error.body ?? error.status.reasonPhrase)
        default:
            return APIError(.internalServerError, "internal", "\(error)")
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let body = ["error": ["code": code, "message": message]]
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[.retryAfter] = String(retryAfter) }
        if let allow { headers[.allow] = allow.joined(separator: ", ") }
        let data = try JSONEncoder().encode(body)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Turns every error into ``APIError`` and enforces the API keys (``APIAccess``).
struct APIMiddleware<Context: RequestContext>: RouterMiddleware {
    let access: APIAccess

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let authorization = request.headers[.authorization]
        switch access.decide(method: request.method.rawValue, path: request.uri.path, authorization: authorization) {
        case .allow:
            break
        case .unauthorized:
            throw APIError(.unauthorized, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
        case .forbidden(let scope):
            throw APIError(.forbidden, "forbidden", "this API key lacks the '\(scope.rawValue)' scope")
        case .tooManyRequests(let retryAfter):
            throw APIError(.tooManyRequests, "rate_limited", "this API key's request rate is exceeded", retryAfter: retryAfter)
        }
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            // A path the API has, with a method it lacks: 405; otherwise a path it does not have.
            let allowed = APIRoutes.methods(of: request.uri.path)
            guard !allowed.isEmpty else { throw APIError.from(error) }
            throw APIError(.methodNotAllowed, "method_not_allowed", "\(request.method) is not allowed here", allow: allowed)
        } catch {
            let apiError = APIError.from(error)
            if apiError.status.code >= 500 {
                context.logger.warning("request failed", metadata: ["error": "\(error)", "path": "\(request.uri.path)"])
            }
            throw apiError
        }
    }
}
