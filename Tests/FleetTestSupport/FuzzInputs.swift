import Foundation

/// The inputs the fuzzer keeps (`Fuzz/corpus/<target>`: its corpus; `Fuzz/regressions/<target>`:
/// every input that once broke a parser), for tests that replay them without the fuzzer.
public enum FuzzInputs {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz")

    /// (file name, bytes) of every input in `folder` under `Fuzz/`, by name; none if it does not exist.
    public static func read(_ folder: String) throws -> [(name: String, bytes: [UInt8])] {
        let directory = root.appendingPathComponent(folder)
        guard FileManager.default.fileExists(atPath: directory.path) else { return [] }
        return try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted().map { name in
            (name, Array(try Data(contentsOf: directory.appendingPathComponent(name))))
        }
    }
}
