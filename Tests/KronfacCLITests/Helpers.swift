import CZlib
import Foundation
import Testing
@testable import KronfacCLI

/// gzip-compresses bytes with zlib.
func gzip(_ bytes: [UInt8]) -> [UInt8] {
    var stream = z_stream()
    precondition(deflateInit2_(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY,
                               ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK)
    defer { deflateEnd(&stream) }
    var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(bytes.count))) + 64)
    var input = bytes
    let produced = input.withUnsafeMutableBufferPointer { inp in
        output.withUnsafeMutableBufferPointer { out in
            stream.next_in = inp.baseAddress
            stream.avail_in = UInt32(inp.count)
            stream.next_out = out.baseAddress
            stream.avail_out = UInt32(out.count)
            precondition(deflate(&stream, Z_FINISH) == Z_STREAM_END)
            return out.count - Int(stream.avail_out)
        }
    }
    return Array(output.prefix(produced))
}

/// An IDX file of unsigned bytes with the given dimensions.
func idxFile(_ dimensions: [Int], _ payload: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = [0, 0, 0x08, UInt8(dimensions.count)]
    for d in dimensions { bytes += [UInt8(d >> 24 & 0xFF), UInt8(d >> 16 & 0xFF), UInt8(d >> 8 & 0xFF), UInt8(d & 0xFF)] }
    return bytes + payload
}

/// A fresh temporary directory; the caller removes it.
func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("kronfac-cli-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// A small learnable MNIST-format data set: `side` x `side` images whose label is where a bright
/// bar sits, plus seeded noise.
struct TinyIDX {
    static let side = 6

    static func images(count: Int, seed: UInt64) -> (pixels: [UInt8], labels: [UInt8]) {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        var pixels: [UInt8] = []
        var labels: [UInt8] = []
        for _ in 0..<count {
            let label = Int(next() % 10)
            labels.append(UInt8(label))
            for p in 0..<(side * side) {
                let lit = p % 10 == label || (p + 3) % 10 == label
                pixels.append(lit ? UInt8(180 + next() % 70) : UInt8(next() % 40))
            }
        }
        return (pixels, labels)
    }

    /// Writes train-* (plain) and, when `test` is set, t10k-* (gzip) into `directory`.
    static func write(to directory: URL, training: Int = 80, test: Int? = 30) throws {
        let train = images(count: training, seed: 1)
        try Data(idxFile([training, side, side], train.pixels)).write(to: directory.appendingPathComponent("train-images-idx3-ubyte"))
        try Data(idxFile([training], train.labels)).write(to: directory.appendingPathComponent("train-labels-idx1-ubyte"))
        if let test {
            let t = images(count: test, seed: 2)
            try Data(gzip(idxFile([test, side, side], t.pixels))).write(to: directory.appendingPathComponent("t10k-images-idx3-ubyte.gz"))
            try Data(gzip(idxFile([test], t.labels))).write(to: directory.appendingPathComponent("t10k-labels-idx1-ubyte.gz"))
        }
    }
}

/// What a run of the `kronfac` executable printed and returned.
struct ToolRun {
    var status: Int32
    var stdout: String
    var stderr: String

    /// The lines of standard error.
    var errorLines: [String] { stderr.split(separator: "\n").map(String.init) }
}

/// The built `kronfac` executable, beside the test bundle.
func toolURL() throws -> URL {
    let candidates = [Bundle.main.bundleURL,
                      URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()]
    for directory in candidates {
        let url = directory.appendingPathComponent("kronfac")
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw CLIError("the kronfac executable was not found beside the tests (\(candidates.map(\.path)))")
}

/// Runs `kronfac` with `arguments` (standard input closed, OPENBLAS_NUM_THREADS=1 so that the
/// tiny runs do not spin threads).
func runTool(_ arguments: [String]) throws -> ToolRun {
    let process = Process()
    process.executableURL = try toolURL()
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment["OPENBLAS_NUM_THREADS"] = "1"
    process.environment = environment
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Read before waiting so that a full pipe cannot block the child.
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ToolRun(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                   stderr: String(decoding: errData, as: UTF8.self))
}

/// Whether `body` throws a `CLIError` whose message contains every fragment.
func expectCLIError(mentioning fragments: [String], sourceLocation: SourceLocation = #_sourceLocation,
                    _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected a CLIError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as CLIError {
        for fragment in fragments {
            #expect(error.message.lowercased().contains(fragment.lowercased()),
                    "message \"\(error.message)\" should mention \"\(fragment)\"", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected a CLIError, got \(error)", sourceLocation: sourceLocation)
    }
}

/// Parses a CSV log into its header and rows of fields.
func parseLog(_ url: URL) throws -> (header: [String], rows: [[String]]) {
    let text = try String(contentsOf: url, encoding: .utf8)
    let lines = text.split(separator: "\n").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
    return (lines.first ?? [], Array(lines.dropFirst()))
}
