import FleetCore
import MQTTCodec
import NIOCore
import RedisClient

/// Entry points for coverage-guided fuzzing (`Fuzz/`, `scripts/fuzz`) and for the tests that
/// replay its corpus. Each hands untrusted bytes to what parses them on a control node and
/// returns the ways the parser broke its contract (empty: none). Not for other use.
public enum ControlNodeFuzzing {
    static let configuration = ControlNodeConfiguration(
        redis: RedisConfiguration(host: "127.0.0.1", port: 6379), host: "127.0.0.1", port: 8080,
        secret: "fuzzing-secret-of-32-bytes-long!", consumerName: "fuzz")

    /// An API request body: the first byte picks the route (credentials, push, batch), the
    /// rest is the body. A body is accepted or refused with an ``APIError`` (a 4xx answer
    /// naming the problem); any other error would be a 500.
    public static func apiRequest(_ input: [UInt8]) -> [String] {
        guard let route = input.first else { return [] }
        let body = ByteBuffer(bytes: input.dropFirst())
        var problems = readersAgree(route: route, body)
        do {
            switch route % 3 {
            case 0:
                _ = TerminalID.isValid(try APIRequestBody.decode(CredentialRequest.self, from: body).terminal)
            case 1:
                let command = try APIRequestBody.decode(PushRequest.self, from: body).command(configuration)
                try [command].checkRequestBudget(configuration)
                problems += accepted(command)
            default:
                let batch = try APIRequestBody.decode(BatchRequest.self, from: body)
                let commands = batch.messages.compactMap { try? $0.command(configuration) }
                try commands.checkRequestBudget(configuration)
                problems += commands.flatMap(accepted)
            }
        } catch is APIError {
        } catch {
            problems.append("not an APIError (a 500): \(error)")
        }
        return problems
    }

    /// A push or batch body the scanning reader takes is one `JSONDecoder` takes too, read
    /// the same (``ScannableRequest``: the reader only saves time, `JSONDecoder` decides).
    static func readersAgree(route: UInt8, _ body: ByteBuffer) -> [String] {
        func agree<T: ScannableRequest & Equatable>(_ type: T.Type) -> [String] {
            guard let scanned = T.scanned(from: body) else { return [] }
            guard let decoded = try? APIRequestBody.decodeWithFoundation(T.self, from: body) else {
                return ["the scanning reader took a body JSONDecoder refuses"]
            }
            return scanned == decoded ? [] : ["the scanning reader read \(scanned), JSONDecoder \(decoded)"]
        }
        switch route % 3 {
        case 1: return agree(PushRequest.self)
        case 2: return agree(BatchRequest.self)
        default: return []
        }
    }

    /// A command stream entry (what anyone may XADD): field, value, field, value, ...
    /// separated by NUL bytes. Accepted, or refused with an ``APIError``.
    public static func commandStreamEntry(_ input: [UInt8]) -> [String] {
        let parts = input.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        var fields: [String: String] = [:]
        for index in stride(from: 0, to: parts.count - 1, by: 2) { fields[parts[index].lowercased()] = parts[index + 1] }
        // As the consumer reads an entry: parsed and checked once, refused with an APIError.
        let entry = CommandStreamConsumer.Entry(id: "0-1", fields: fields, configuration: configuration)
        _ = entry.orderingKeys
        switch entry.command {
        case .success(let command): return accepted(command)
        case .failure(let error): return error is APIError ? [] : ["not an APIError: \(error)"]
        }
    }

    /// What an accepted push must hold: the bounds its validation promises.
    static func accepted(_ command: PushCommand) -> [String] {
        var problems: [String] = []
        if command.payload.count > configuration.maximumPayloadSize { problems.append("payload over the bound accepted") }
        if command.qos > 2 { problems.append("qos \(command.qos) accepted") }
        if case .terminals(let ids) = command.audience {
            if ids.isEmpty || ids.count > configuration.maximumTargets { problems.append("\(ids.count) targets accepted") }
            if let bad = ids.first(where: { !TerminalID.isValid($0) }) { problems.append("terminal id \(bad.debugDescription) accepted") }
        }
        if case .topic(let topic) = command.audience, !MQTTTopic.isValidTopicName(topic) || MQTTTopic.hasWildcard(topic) {
            problems.append("topic \(topic.debugDescription) accepted")
        }
        return problems
    }
}
