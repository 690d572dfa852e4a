import ControlNode
import FleetTestSupport
import Testing

/// The fuzzer's corpora for API request bodies and command stream entries, and every input
/// that once broke them, through the checks the fuzzer runs.
@Suite struct ControlFuzzCorpusTests {
    @Test(arguments: ["api-request", "command-stream"])
    func corpusAndRegressionsKeepTheContract(target: String) throws {
        let corpus = try FuzzInputs.read("corpus/\(target)")
        #expect(corpus.count > 50, "the committed corpus of \(target)")
        let check = target == "api-request" ? ControlNodeFuzzing.apiRequest : ControlNodeFuzzing.commandStreamEntry
        for (name, input) in corpus + (try FuzzInputs.read("regressions/\(target)")) {
            #expect(check(input).isEmpty, "\(target)/\(name)")
        }
    }

    @Test func aBodyThatIsNotJSONOrHasTheWrongTypesIsABadRequestNotAServerError() {
        // Route byte 1: a push.
        for body in ["", "[", "{\"to\": 5}", "{\"to\": [\"a\"], \"qos\": 1e400}", String(repeating: "[", count: 10_000)] {
            #expect(ControlNodeFuzzing.apiRequest([1] + Array(body.utf8)).isEmpty, "\(body.prefix(20))")
        }
    }
}
