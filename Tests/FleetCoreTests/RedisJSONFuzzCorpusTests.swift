import FleetCore
import FleetTestSupport
import Testing

/// The fuzzer's corpus for the JSON nodes read from Redis, and every input that once broke a
/// decoder, through the check the fuzzer runs.
@Suite struct RedisJSONFuzzCorpusTests {
    @Test func corpusAndRegressionsRoundTrip() throws {
        let corpus = try FuzzInputs.read("corpus/redis-json")
        #expect(corpus.count > 50, "the committed corpus")
        for (name, input) in corpus + (try FuzzInputs.read("regressions/redis-json")) {
            #expect(FleetCoreFuzzing.redisJSON(input).isEmpty, "\(name)")
        }
    }

    @Test func unknownValuesNestedPastTheDepthBoundAreRefusedNotRecursedInto() {
        let deep = String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000)
        let entry = #"{"id":"m","qos":1,"expiresAt":0,"topic":"t","payload":"","x":"# + deep + "}"
        #expect(StoredMessage.decode(entry) == nil)
        let nested = String(repeating: "[", count: 63) + String(repeating: "]", count: 63)
        #expect(StoredMessage.decode(#"{"id":"m","qos":1,"expiresAt":0,"topic":"t","payload":"","x":"# + nested + "}") != nil)
    }
}
