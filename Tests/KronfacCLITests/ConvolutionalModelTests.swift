import Foundation
import Testing
@testable import Kronfac
@testable import KronfacCLI

/// Generated 12x12 images of four stroke directions (horizontal, vertical, both diagonals) at
/// random places on a noisy background: a task a small CNN learns, written as IDX files.
struct StrokeImages {
    static let side = 12

    static func images(count: Int, seed: UInt64) -> (pixels: [UInt8], labels: [UInt8]) {
        var generator = SeededGenerator(seed: seed)
        var pixels: [UInt8] = [], labels: [UInt8] = []
        for _ in 0..<count {
            let label = generator.nextIndex(below: 4)
            var image = (0..<(side * side)).map { _ in UInt8(generator.nextIndex(below: 70)) }
            let row = 2 + generator.nextIndex(below: 8), column = 2 + generator.nextIndex(below: 8)
            let half = 1 + generator.nextIndex(below: 2)
            for t in -half...half {
                let (r, c) = [(row, column + t), (row + t, column), (row + t, column + t), (row + t, column - t)][label]
                if r >= 0, r < side, c >= 0, c < side { image[r * side + c] = UInt8(180 + generator.nextIndex(below: 75)) }
            }
            pixels += image
            labels.append(UInt8(label))
        }
        return (pixels, labels)
    }

    static func write(to directory: URL, training: Int, test: Int) throws {
        for (prefix, count, seed) in [("train", training, UInt64(1)), ("t10k", test, UInt64(2))] {
            let data = images(count: count, seed: seed)
            try Data(idxFile([count, side, side], data.pixels))
                .write(to: directory.appendingPathComponent("\(prefix)-images-idx3-ubyte"))
            try Data(idxFile([count], data.labels)).write(to: directory.appendingPathComponent("\(prefix)-labels-idx1-ubyte"))
        }
    }
}

@Suite("kronfac train --model conv:...")
struct ConvolutionalModelTests {
    @Test("conv: models parse, build and describe themselves")
    func parsing() throws {
        let model = try #require(try ConvolutionalModel.parse("conv:16-32,dense:128"))
        #expect(model == ConvolutionalModel(channels: [16, 32], hidden: [128]) && model.description == "conv:16-32,dense:128")
        #expect(try ConvolutionalModel.parse("conv:8,gap") == ConvolutionalModel(channels: [8], globalPooling: true))
        #expect(try ConvolutionalModel.parse("784-10") == nil)
        for bad in ["conv:", "conv:16-x", "conv:0", "conv:8,dense:", "conv:8,pool", "conv:8,dense:4,gap", "conv:8,dense:4,dense:2"] {
            expectCLIError(mentioning: ["malformed --model", "conv:16-32,dense:128"]) { _ = try ConvolutionalModel.parse(bad) }
        }
        let configuration = try TrainCommand.parse(["--model", "conv:4-8,dense:16", "--activation", "tanh"]).configuration(
            source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        #expect(configuration.convolution == ConvolutionalModel(channels: [4, 8], hidden: [16]))
        #expect(configuration.widths == [784, 16, 10])
        #expect(configuration.modelSummary.hasPrefix("conv:4-8,dense:16 on 28x28 images"))
        let network = configuration.makeModel()
        // Reshape, 2 x (conv, tanh, pool), flatten, dense, tanh, dense.
        #expect(network.layers.count == 11 && network.linearMaps.count == 4)
        // 28 -> 14 -> 7: the first dense layer takes 8 * 7 * 7 values.
        #expect(network.denseLayers.map(\.inputSize) == [392, 16])
        #expect(network.parameterCount == (4 * 9 + 4) + (8 * 4 * 9 + 8) + (392 * 16 + 16) + (16 * 10 + 10))
        #expect(try network.forward(Tensor(shape: [3, 784])).shape == [3, 10])
        // Pooled away before the loss: the convolutions are factored with K-FAC-reduce.
        let pooled = try TrainCommand.parse(["--model", "conv:4-8,gap"]).configuration(
            source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil).makeModel()
        #expect(pooled.sharedAxisSettings.map(\.reduce) == [true, true, false])
        // Flattened: K-FAC-expand with one loss term per image (KFC).
        #expect(network.sharedAxisSettings.prefix(2).allSatisfy { !$0.reduce && $0.lossTermsPerExample == 1 })
    }

    @Test("conv: models are refused where they cannot work")
    func refusals() throws {
        expectCLIError(mentioning: ["conv:", "--task classify"]) {
            _ = try TrainCommand.parse(["--model", "conv:4"]).configuration(
                source: .curves, task: .autoencoder, inputWidth: 784, classes: nil, saved: nil)
        }
        expectCLIError(mentioning: ["square", "20 values"]) {
            _ = try TrainCommand.parse(["--model", "conv:4"]).configuration(
                source: .idx("/tmp/x"), task: .classify, inputWidth: 20, classes: 10, saved: nil)
        }
        expectCLIError(mentioning: ["too small"]) {
            _ = try TrainCommand.parse(["--model", "conv:4-4-4"]).configuration(
                source: .idx("/tmp/x"), task: .classify, inputWidth: 9, classes: 10, saved: nil)
        }
        expectCLIError(mentioning: ["weights", "at most"]) {
            _ = try TrainCommand.parse(["--model", "conv:4096-4096-4096"]).configuration(
                source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        }
        #expect(throws: (any Error).self) { _ = try TrainCommand.parse(["--model", "conv:4-y"]) }
    }

    @Test("A small CNN trains to a lower loss with FOOF and K-FAC than with SGD in the same steps")
    func cnnTraining() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try StrokeImages.write(to: dir, training: 400, test: 100)
        let log = dir.appendingPathComponent("cnn.csv")
        let run = try runTool(["train", "--data", "idx:\(dir.path)", "--model", "conv:6-12,dense:24", "--steps", "150",
                               "--batch-size", "40", "--optimizers", "foof,kfac,sgd", "--inverse-interval", "10",
                               "--stats-subsample", "0", "--log-every", "50", "--eval-examples", "400", "--log", log.path])
        #expect(run.status == 0, "stderr: \(run.stderr)")
        #expect(run.stdout.contains("conv:6-12,dense:24 on 12x12 images"))
        let (_, rows) = try parseLog(log)
        var final: [String: Float] = [:]
        for row in rows where row[1] == "150" { final[row[0]] = Float(row[3]) }
        let start = try #require(rows.first.flatMap { Float($0[3]) })
        let foof = try #require(final["foof"]), kfac = try #require(final["kfac"]), sgd = try #require(final["sgd"])
        #expect(sgd < start, "SGD learns too (\(start) -> \(sgd))")
        #expect(foof < sgd && kfac < sgd, "FOOF \(foof), K-FAC \(kfac), SGD \(sgd)")
    }
}
