import CHiredis
import NIOCore

/// A RESP2 reply, copied out of hiredis's reply tree.
public enum RedisReply: Hashable, Sendable, CustomStringConvertible {
    case bulkString(ByteBuffer)
    case status(String)
    case integer(Int64)
    case null
    case array([RedisReply])
    /// An error reply (`-ERR ...`). Single-command calls throw it as ``RedisError``;
    /// pipelines return it in place so callers can see which command failed.
    case error(String)

    /// The reply as text (bulk string or status); `nil` for other kinds.
    public var string: String? {
        switch self {
        case .bulkString(let b): return String(buffer: b)
        case .status(let s): return s
        case .integer(let i): return String(i)
        default: return nil
        }
    }

    /// The reply as an integer (integer replies and numeric strings).
    public var int: Int64? {
        switch self {
        case .integer(let i): return i
        case .bulkString(let b): return Int64(String(buffer: b))
        case .status(let s): return Int64(s)
        default: return nil
        }
    }

    /// The elements of an array reply; `[]` for null, `nil` for other kinds.
    public var array: [RedisReply]? {
        switch self {
        case .array(let a): return a
        case .null: return []
        default: return nil
        }
    }

    /// An array reply of alternating keys and values (HGETALL, stream entry fields) as a
    /// dictionary; `nil` for other kinds. Entries that are not text are skipped.
    public var pairs: [String: String]? {
        guard let items = array else { return nil }
        var result: [String: String] = [:]
        var index = 0
        while index + 1 < items.count {
            if let key = items[index].string, let value = items[index + 1].string { result[key] = value }
            index += 2
        }
        return result
    }

    /// Whether this is a null reply.
    public var isNull: Bool { self == .null }

    /// Whether this is an error reply (pipelines keep them in place).
    public var isError: Bool {
        if case .error = self { return true }
        return false
    }

    /// Throws the error reply as ``RedisError``; returns `self` otherwise.
    public func throwingError() throws -> RedisReply {
        if case .error(let message) = self { throw RedisError(.server, message) }
        return self
    }

    public var description: String {
        switch self {
        case .bulkString(let b): return String(buffer: b).debugDescription
        case .status(let s): return s
        case .integer(let i): return "(integer) \(i)"
        case .null: return "(nil)"
        case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .error(let e): return "(error) \(e)"
        }
    }

    /// Copies a hiredis reply tree. The caller still owns (and frees) `pointer`.
    init(hiredis pointer: UnsafeMutablePointer<redisReply>) {
        let reply = pointer.pointee
        switch reply.type {
        case REDIS_REPLY_STRING:
            var buffer = ByteBuffer()
            buffer.writeBytes(UnsafeRawBufferPointer(start: reply.str, count: reply.len))
            self = .bulkString(buffer)
        case REDIS_REPLY_STATUS:
            self = .status(String(decoding: UnsafeRawBufferPointer(start: reply.str, count: reply.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            self = .error(String(decoding: UnsafeRawBufferPointer(start: reply.str, count: reply.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(reply.integer))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(reply.elements)
            for index in 0..<reply.elements {
                if let element = reply.element[index] { elements.append(RedisReply(hiredis: element)) }
            }
            self = .array(elements)
        default:
            self = .null
        }
    }
}
