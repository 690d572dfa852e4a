import FleetTestSupport
import NIOCore
import Testing

@testable import RedisClient

/// Our RESP encoding of commands against hiredis's (`redisFormatCommandArgv`), the reference.
struct RedisCommandTests {
    @Test func encodingIsHiredisByteForByte() {
        var generator = SeededGenerator(seed: 13)
        for round in 0..<500 {
            // Arguments of every length class (empty, one digit, many digits), any bytes.
            let count = Int.random(in: 1...12, using: &generator)
            let arguments = (0..<count).map { _ -> [UInt8] in
                let length = [0, 1, 9, 10, 99, 100, 1_000, 10_000].randomElement(using: &generator)! + (round % 3)
                return (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            }
            let command = RedisCommand(arguments)
            var buffer = ByteBuffer()
            command.encode(into: &buffer)
            #expect(Array(buffer.readableBytesView) == command.hiredisEncoding(), "round \(round)")
        }
        var buffer = ByteBuffer()
        RedisCommand("PING").encode(into: &buffer)
        #expect(String(buffer: buffer) == "*1\r\n$4\r\nPING\r\n")
    }
}
