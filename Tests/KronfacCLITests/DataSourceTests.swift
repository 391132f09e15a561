import Foundation
import Kronfac
import Testing
@testable import KronfacCLI

@Suite("Data sources of kronfac train")
struct DataSourceTests {
    @Test("idx:DIR reads a plain training pair and a gzip test pair")
    func idxDirectory() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try TinyIDX.write(to: dir, training: 40, test: 12)
        let data = try DataLoader.load(.idx(dir.path), task: .classify, seed: 1)
        #expect(data.training.count == 40 && data.test.count == 12 && !data.testIsHeldOut)
        #expect(data.inputWidth == 36 && data.classes == 10)
        // Pixels scaled to [0, 1]; labels one-hot and equal to the file's.
        let raw = TinyIDX.images(count: 40, seed: 1)
        #expect(data.training.inputs[3, 5] == Float(raw.pixels[3 * 36 + 5]) / 255)
        for row in 0..<40 { #expect(data.training.targets[row, Int(raw.labels[row])] == 1) }
        #expect(data.summary.contains("40 training") && data.summary.contains("6x6"))
        // The autoencoder reads the images only, as their own targets.
        let images = try DataLoader.load(.idx(dir.path), task: .autoencoder, seed: 1)
        #expect(images.classes == nil && images.training.targets == images.training.inputs)
    }

    @Test("Without the t10k pair a sixth of the training data is held out, by seed")
    func heldOut() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try TinyIDX.write(to: dir, training: 60, test: nil)
        let a = try DataLoader.load(.idx(dir.path), task: .classify, seed: 1)
        #expect(a.training.count == 50 && a.test.count == 10 && a.testIsHeldOut)
        #expect(a.summary.contains("held out"))
        let b = try DataLoader.load(.idx(dir.path), task: .classify, seed: 1)
        #expect(a.test.inputs == b.test.inputs)
        // Only one file of the test pair is an error.
        try Data(gzip(idxFile([5, 6, 6], [UInt8](repeating: 1, count: 180))))
            .write(to: dir.appendingPathComponent("t10k-images-idx3-ubyte.gz"))
        expectCLIError(mentioning: ["t10k-labels", "both or neither"]) {
            _ = try DataLoader.load(.idx(dir.path), task: .classify, seed: 1)
        }
    }

    @Test("Missing, truncated, mis-tagged and broken-gzip files fail with a message naming the file")
    func badFiles() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        expectCLIError(mentioning: ["not a directory"]) {
            _ = try DataLoader.load(.idx(dir.appendingPathComponent("nope").path), task: .classify, seed: 1)
        }
        expectCLIError(mentioning: ["train-images-idx3-ubyte"]) { _ = try DataLoader.load(.idx(dir.path), task: .classify, seed: 1) }
        try TinyIDX.write(to: dir, training: 20, test: nil)
        let images = dir.appendingPathComponent("train-images-idx3-ubyte")
        let good = try Data(contentsOf: images)
        let cases: [(String, Data, [String])] = [
            ("truncated", good.prefix(good.count - 7), ["truncated"]),
            ("wrong magic", Data([0x12, 0x34]) + good.dropFirst(2), ["magic"]),
            ("broken gzip", Data(Array(gzip([UInt8](good)).prefix(30))), ["gzip"]),
        ]
        for (name, bytes, fragments) in cases {
            try bytes.write(to: images)
            do {
                _ = try DataLoader.load(.idx(dir.path), task: .classify, seed: 1)
                Issue.record("\(name): no error")
            } catch let error as KronfacError {
                #expect(error.code == .format, "\(name): \(error)")
                #expect(error.message.contains("train-images-idx3-ubyte"), "\(name): \(error.message)")
                for fragment in fragments { #expect(error.message.contains(fragment), "\(name): \(error.message)") }
            }
        }
    }

    @Test("csv:FILE: labels in the last column, or pixels in [0, 1] for the autoencoder")
    func csvFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("d.csv").path
        let lines = ["a,b,label"] + (0..<12).map { "0.\($0 % 10),0.5,\($0 % 3)" }
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let data = try DataLoader.load(.csv(path), task: .classify, seed: 1)
        #expect(data.training.count == 10 && data.test.count == 2 && data.classes == 3 && data.inputWidth == 2)
        expectCLIError(mentioning: ["outside [0, 1]"]) { _ = try DataLoader.load(.csv(path), task: .autoencoder, seed: 1) }
        try "1,2,0.5\n3,4,1\n".write(toFile: path, atomically: true, encoding: .utf8)
        expectCLIError(mentioning: ["row 1", "not an integer"]) { _ = try DataLoader.load(.csv(path), task: .classify, seed: 1) }
        expectCLIError(mentioning: ["no labels", "autoencoder"]) { _ = try DataLoader.load(.curves, task: .classify, seed: 1) }
    }
}
