import Foundation
import Testing
@testable import Kronfac

private func classification(count: Int = 50, seed: UInt64 = 1) throws -> Dataset {
    let x = randomTensor([count, 5], seed: seed)
    let labels = (0..<count).map { r in x[r, 0] - x[r, 3] > 0 ? 1 : (x[r, 1] > 0 ? 2 : 0) }
    return try Dataset(inputs: x, targets: Dataset.oneHot(labels, classes: 3))
}

private func makeModel(seed: UInt64) -> Sequential {
    Sequential(seed: seed, Dense(5, 8, initialization: .he), ReLU(), Dense(8, 6), Tanh(), Dense(6, 3, bias: false))
}

private func makeOptimizer(_ name: String) throws -> Optimizer {
    // Short intervals, so that a resumed run crosses statistics and inverse refreshes.
    switch name {
    case "sgd": return try SGD(learningRate: 0.05, momentum: 0.9, weightDecay: 1e-3)
    case "adam": return try Adam(learningRate: 0.01)
    case "foof": return try FOOF(momentum: 0.5, statisticsInterval: 2, inverseInterval: 3)
    case "kfac": return try KFAC(momentum: 0.5, statisticsInterval: 2, inverseInterval: 3, klClip: 0.01)
    case "kfac-empirical": return try KFAC(inverseInterval: 3, fisher: .empirical)
    default: return try EKFAC(statisticsInterval: 1, inverseInterval: 3)
    }
}

@Suite("Training loop")
struct TrainingTests {
    @Test("Save and resume continue a run bit-exactly", arguments: ["sgd", "adam", "foof", "kfac", "kfac-empirical", "ekfac"])
    func resumeIsBitExact(name: String) throws {
        let data = try classification()
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("run.kftrain").path

        // Uninterrupted: 3 epochs of 7 batches (the last one partial).
        let straight = try Trainer(model: makeModel(seed: 1), loss: SoftmaxCrossEntropy(),
                                   optimizer: makeOptimizer(name), batchSize: 8, seed: 42)
        try straight.fit(data, epochs: 3)

        // Interrupted mid-epoch, saved, and resumed by fresh objects with other seeds and sizes.
        let first = try Trainer(model: makeModel(seed: 1), loss: SoftmaxCrossEntropy(),
                                optimizer: makeOptimizer(name), batchSize: 8, seed: 42)
        try first.fit(data, steps: 10)
        try first.save(to: path)
        let resumed = try Trainer(model: makeModel(seed: 99), loss: SoftmaxCrossEntropy(),
                                  optimizer: makeOptimizer(name), batchSize: 3, seed: 7)
        try resumed.restore(from: path)
        #expect(resumed.step == 10 && resumed.epoch == 1 && resumed.batchInEpoch == 3)
        #expect(resumed.batchSize == 8 && resumed.seed == 42)
        try resumed.fit(data, epochs: 3)

        #expect(resumed.step == straight.step && resumed.epoch == 3)
        #expect(bitwiseEqual(parameterSnapshot(resumed.model), parameterSnapshot(straight.model)))
        #expect(try resumed.optimizer.checkpoint() == straight.optimizer.checkpoint())
        #expect(resumed.optimizer.stepCount == 21)
    }

    @Test("Damaged or mismatched checkpoints are refused and change nothing")
    func badCheckpoints() throws {
        let data = try classification()
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("run.kftrain").path
        let source = try Trainer(model: makeModel(seed: 1), loss: SoftmaxCrossEntropy(), optimizer: KFAC(), batchSize: 10)
        try source.fit(data, steps: 3)
        try source.save(to: path)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))

        let target = try Trainer(model: makeModel(seed: 2), loss: SoftmaxCrossEntropy(), optimizer: KFAC(), batchSize: 10)
        try target.fit(data, steps: 2)
        let before = parameterSnapshot(target.model)
        let state = try target.optimizer.checkpoint()
        func unchanged() throws -> Bool {
            let current = try target.optimizer.checkpoint()
            return bitwiseEqual(parameterSnapshot(target.model), before) && current == state && target.step == 2
        }
        func attempt(_ content: [UInt8], _ code: KronfacError.Code, _ fragments: [String]) throws {
            let damaged = dir.appendingPathComponent("damaged").path
            try Data(content).write(to: URL(fileURLWithPath: damaged))
            expectKronfacError(code, mentioning: fragments) { try target.restore(from: damaged) }
            #expect(try unchanged())
        }
        try attempt(Array(bytes.prefix(bytes.count / 2)), .format, ["checksum"])
        try attempt(Array(bytes.prefix(5)), .format, ["magic"])
        var flipped = bytes
        flipped[bytes.count / 2] ^= 0x40
        try attempt(flipped, .format, ["checksum"])
        try attempt(Array("not a checkpoint at all".utf8), .format, ["magic"])
        expectKronfacError(.io) { try target.restore(from: dir.appendingPathComponent("missing").path) }
        #expect(try unchanged())

        // Another optimizer kind or another model shape.
        let foof = try Trainer(model: makeModel(seed: 2), loss: SoftmaxCrossEntropy(), optimizer: FOOF(), batchSize: 10)
        expectKronfacError(.format, mentioning: ["kfac", "foof"]) { try foof.restore(from: path) }
        let wider = try Trainer(model: Sequential(Dense(5, 9), ReLU(), Dense(9, 6), Tanh(), Dense(6, 3, bias: false)),
                                loss: SoftmaxCrossEntropy(), optimizer: KFAC(), batchSize: 10)
        expectKronfacError(.format, mentioning: ["layer 0"]) { try wider.restore(from: path) }
        let empirical = try Trainer(model: makeModel(seed: 2), loss: SoftmaxCrossEntropy(), optimizer: KFAC(fisher: .empirical))
        expectKronfacError(.format, mentioning: ["Fisher"]) { try empirical.restore(from: path) }
    }

    @Test("Bad batches are refused with a message naming the problem, and nothing changes")
    func badInput() throws {
        let data = try classification()
        let trainer = try Trainer(model: makeModel(seed: 1), loss: SoftmaxCrossEntropy(), optimizer: KFAC(), batchSize: 10)
        try trainer.fit(data, steps: 2)
        let before = parameterSnapshot(trainer.model)
        let state = try trainer.optimizer.checkpoint()
        func expectUnchanged(sourceLocation: SourceLocation = #_sourceLocation) throws {
            #expect(bitwiseEqual(parameterSnapshot(trainer.model), before), sourceLocation: sourceLocation)
            #expect(try trainer.optimizer.checkpoint() == state, sourceLocation: sourceLocation)
            #expect(trainer.step == 2 && trainer.optimizer.stepCount == 2, sourceLocation: sourceLocation)
        }
        let x = data.inputs.rows(0..<10), y = data.targets.rows(0..<10)

        expectKronfacError(.shape, mentioning: ["4 values per example", "expected 5"]) {
            try trainer.trainStep(input: randomTensor([10, 4], seed: 1), target: y)
        }
        expectKronfacError(.shape, mentioning: ["10 inputs", "9 targets"]) { try trainer.trainStep(input: x, target: y.rows(0..<9)) }
        expectKronfacError(.shape, mentioning: ["target shape [10, 4]", "[10, 3]"]) {
            try trainer.trainStep(input: x, target: randomOneHot(rows: 10, classes: 4, seed: 1))
        }
        expectKronfacError(.shape, mentioning: ["empty"]) { try trainer.trainStep(input: Tensor(shape: [0, 5]), target: Tensor(shape: [0, 3])) }
        var nan = x
        nan[3, 2] = .nan
        expectKronfacError(.nonFinite, mentioning: ["input", "NaN"]) { try trainer.trainStep(input: nan, target: y) }
        var infinite = y
        infinite[0, 0] = .infinity
        expectKronfacError(.nonFinite, mentioning: ["target"]) { try trainer.trainStep(input: x, target: infinite) }
        try expectUnchanged()

        // Whole data sets: NaN anywhere is found before the first step; so is a wrong width.
        var inputs = data.inputs
        inputs[49, 4] = .nan
        expectKronfacError(.nonFinite, mentioning: ["training inputs"]) {
            try trainer.fit(Dataset(inputs: inputs, targets: data.targets), epochs: 5)
        }
        expectKronfacError(.nonFinite, mentioning: ["validation"]) {
            try trainer.fit(data, steps: 3, validation: Dataset(inputs: inputs, targets: data.targets))
        }
        expectKronfacError(.shape, mentioning: ["6 values per example", "takes 5"]) {
            try trainer.fit(Dataset(inputs: randomTensor([50, 6], seed: 1), targets: data.targets), steps: 1)
        }
        expectKronfacError(.shape, mentioning: ["50 examples", "40"]) { try trainer.fit(data.subset(0..<40), steps: 1) }
        expectKronfacError(.invalidArgument, mentioning: ["steps"]) { try trainer.fit(data, steps: -1) }
        expectKronfacError(.invalidArgument, mentioning: ["batchSize"]) {
            _ = try Trainer(model: makeModel(seed: 1), loss: SoftmaxCrossEntropy(), optimizer: SGD(), batchSize: 0)
        }
        try expectUnchanged()

        // Direct layer and loss misuse.
        let dense = Dense(3, 2)
        expectKronfacError(.state, mentioning: ["before forward"]) { _ = try dense.backward(Tensor(shape: [1, 2])) }
        expectKronfacError(.shape, mentioning: ["expected 3"]) { _ = try dense.forward(Tensor(shape: [2, 4])) }
        _ = try dense.forward(Tensor(shape: [2, 3]))
        expectKronfacError(.shape, mentioning: ["3 examples", "had 2"]) { _ = try dense.backward(Tensor(shape: [3, 2])) }
        expectKronfacError(.shape, mentioning: ["[2, 3]", "needs [2, 3]"]) { try dense.setParameters(weight: Tensor(shape: [3, 2]), bias: Tensor(shape: [2])) }
        expectKronfacError(.nonFinite) { try dense.setParameters(weight: Tensor(shape: [2, 3], repeating: .nan), bias: Tensor(shape: [2])) }
        expectKronfacError(.shape, mentioning: ["Tanh", "[2, 2]"]) {
            let tanh = Tanh()
            _ = try tanh.forward(Tensor(shape: [2, 3]))
            _ = try tanh.backward(Tensor(shape: [2, 2]))
        }
    }

    @Test("Progress reports, validation and epoch bookkeeping")
    func progress() throws {
        let data = try classification()
        let (training, validation) = try data.split(trainingCount: 40, seed: 1)
        let trainer = try Trainer(model: makeModel(seed: 3), loss: SoftmaxCrossEntropy(), optimizer: FOOF(), batchSize: 16, seed: 5)
        var reports: [TrainingProgress] = []
        let last = try trainer.fit(training, epochs: 4, validation: validation, reportEvery: 2) { reports.append($0) }
        // 3 batches per epoch (16, 16, 8): reports at steps 2, 3 (epoch end), 4, 6 (epoch end), ...
        #expect(reports.filter(\.isEpochEnd).map(\.epoch) == [1, 2, 3, 4])
        #expect(reports.filter(\.isEpochEnd).allSatisfy { $0.validationLoss != nil })
        #expect(reports.filter { !$0.isEpochEnd }.allSatisfy { $0.validationLoss == nil && $0.step % 2 == 0 })
        #expect(reports.map(\.step) == [2, 3, 4, 6, 8, 9, 10, 12])
        #expect(last == reports.last!.trainingLoss)
        #expect(reports.last!.validationLoss == (try trainer.evaluate(validation)))
        #expect(reports.last!.trainingLoss < reports.first!.trainingLoss)
        // Asking for epochs already done trains nothing more.
        try trainer.fit(training, epochs: 2)
        #expect(trainer.step == 12)
        #expect(try trainer.accuracy(training) > 0.5)
    }

    @Test("Shuffling and sampling depend on the seed only")
    func seededRuns() throws {
        let data = try classification()
        func run(seed: UInt64) throws -> [Tensor] {
            let trainer = try Trainer(model: makeModel(seed: 1), loss: SoftmaxCrossEntropy(), optimizer: KFAC(), batchSize: 10, seed: seed)
            try trainer.fit(data, epochs: 2)
            return parameterSnapshot(trainer.model)
        }
        #expect(bitwiseEqual(try run(seed: 3), try run(seed: 3)))
        #expect(!bitwiseEqual(try run(seed: 3), try run(seed: 4)))
    }
}

@Test("A batch share trains on its part of every batch; the parts' SGD steps average to the whole batch's")
func batchShareSplitsBatches() throws {
    let data = try Dataset(inputs: randomTensor([12, 5], seed: 1), targets: randomTensor([12, 3], seed: 2))
    func trained(share: (Int, Int)?) throws -> [Tensor] {
        let trainer = try Trainer(model: Sequential(seed: 4, Dense(5, 6), Tanh(), Dense(6, 3)), loss: MeanSquaredError(),
                                  optimizer: SGD(learningRate: 0.1, momentum: 0), batchSize: 12, seed: 7)
        if let share { try trainer.setBatchShare(rank: share.0, ranks: share.1) }
        try trainer.fit(data, steps: 1)
        return parameterSnapshot(trainer.model)
    }
    let whole = try trained(share: nil), first = try trained(share: (0, 2)), second = try trained(share: (1, 2))
    // One SGD step is linear in the gradient, and the halves' mean-loss gradients average to the whole's.
    for (w, (a, b)) in zip(whole, zip(first, second)) {
        for (x, (y, z)) in zip(w.scalars, zip(a.scalars, b.scalars)) { #expect(abs(x - (y + z) / 2) <= 1e-6) }
    }
    #expect(!bitwiseEqual(first, whole) && !bitwiseEqual(second, whole) && !bitwiseEqual(first, second))
    expectKronfacError(.invalidArgument) {
        try Trainer(model: Sequential(Dense(1, 1)), loss: MeanSquaredError(), optimizer: SGD()).setBatchShare(rank: 2, ranks: 2)
    }
}
