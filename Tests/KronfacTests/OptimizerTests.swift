import Foundation
import Testing
@testable import Kronfac

/// Ill-conditioned linear regression: inputs whose scales span 1.5 decades, exact targets of a
/// teacher, so the least-squares minimum is 0.
private func regressionProblem() throws -> Dataset {
    let n = 64, d = 6, c = 3
    var generator = SeededGenerator(seed: 1)
    var xs: [Float] = []
    for _ in 0..<n {
        for j in 0..<d { xs.append(Float(generator.nextNormal() * pow(10, 1.5 * Double(j) / Double(d - 1)))) }
    }
    let x = try Tensor(shape: [n, d], scalars: xs)
    let teacher = Dense(d, c)
    try teacher.setParameters(weight: randomTensor([c, d], seed: 2), bias: randomTensor([c], seed: 3))
    return try Dataset(inputs: x, targets: teacher.forward(x))
}

/// The training loss after each of `steps` full-batch steps.
private func regressionLosses(_ optimizer: Optimizer, steps: Int) throws -> [Float] {
    let data = try regressionProblem()
    let model = Sequential(seed: 4, Dense(6, 3))
    let trainer = try Trainer(model: model, loss: MeanSquaredError(), optimizer: optimizer, batchSize: data.count, seed: 5)
    var losses = [try trainer.evaluate(data)]
    for _ in 0..<steps {
        try trainer.fit(data, steps: 1)
        losses.append(try trainer.evaluate(data))
    }
    return losses
}

@Suite("Optimizers")
struct OptimizerTests {
    @Test("FOOF with lr C/2 and tiny damping is one Newton step on linear least squares")
    func foofNewtonStep() throws {
        // MSE (mean over C = 3 outputs) has Hessian (2/C) A (x) I: FOOF's direction scaled by C/2.
        let losses = try regressionLosses(FOOF(learningRate: 1.5, damping: 1e-4, inverseInterval: 1), steps: 1)
        #expect(losses[1] < 1e-6 * losses[0], "\(losses)")
        // SGD with the largest stable learning rate is nowhere near after the same step.
        let sgd = try regressionLosses(SGD(learningRate: 1e-4, momentum: 0), steps: 1)
        #expect(sgd[1] > 0.1 * sgd[0], "\(sgd)")
    }

    @Test("K-FAC and EKFAC with the sampled Fisher close in on the minimum in a few steps")
    func kfacConverges() throws {
        for optimizer in [try KFAC(learningRate: 1, damping: 1e-3, inverseInterval: 1) as Optimizer,
                          try KFAC(learningRate: 1, damping: 1e-3, inverseInterval: 1, exactDamping: true),
                          try EKFAC(learningRate: 1, damping: 1e-3, inverseInterval: 1)] {
            let losses = try regressionLosses(optimizer, steps: 5)
            #expect(losses[5] < 1e-3 * losses[0], "\(type(of: optimizer)): \(losses)")
        }
    }

    @Test("Every optimizer lowers the loss of a small classifier", arguments: ["sgd", "adam", "foof", "kfac", "kfac-exact", "ekfac", "kfac-empirical"])
    func everyOptimizerTrains(name: String) throws {
        let optimizer: Optimizer = switch name {
        case "sgd": try SGD()
        case "adam": try Adam(learningRate: 1e-2)
        case "foof": try FOOF()
        case "kfac": try KFAC()
        case "kfac-exact": try KFAC(exactDamping: true)
        case "ekfac": try EKFAC()
        default: try KFAC(fisher: .empirical)
        }
        let x = randomTensor([60, 4], seed: 1)
        // Classes from a fixed linear rule, so the problem is learnable.
        let labels = (0..<60).map { r in x[r, 0] + 0.5 * x[r, 1] > 0 ? (x[r, 2] > 0 ? 2 : 1) : 0 }
        let data = try Dataset(inputs: x, targets: Dataset.oneHot(labels, classes: 3))
        let model = Sequential(seed: 2, Dense(4, 16, initialization: .he), ReLU(), Dense(16, 3))
        let trainer = try Trainer(model: model, loss: SoftmaxCrossEntropy(), optimizer: optimizer, batchSize: 20, seed: 3)
        let before = try trainer.evaluate(data)
        try trainer.fit(data, epochs: 10)
        let after = try trainer.evaluate(data)
        #expect(after < 0.6 * before, "\(name): \(before) -> \(after)")
        #expect(optimizer.stepCount == 30 && trainer.step == 30 && trainer.epoch == 10)
    }

    @Test("Hyperparameters are validated when the optimizer is created, naming the parameter")
    func invalidHyperparameters() {
        expectKronfacError(.invalidArgument, mentioning: ["learningRate"]) { _ = try SGD(learningRate: 0) }
        expectKronfacError(.invalidArgument, mentioning: ["momentum"]) { _ = try SGD(momentum: 1) }
        expectKronfacError(.invalidArgument, mentioning: ["weightDecay"]) { _ = try Adam(weightDecay: -1) }
        expectKronfacError(.invalidArgument, mentioning: ["beta2"]) { _ = try Adam(beta2: 1) }
        expectKronfacError(.invalidArgument, mentioning: ["epsilon"]) { _ = try Adam(epsilon: 0) }
        expectKronfacError(.invalidArgument, mentioning: ["damping"]) { _ = try KFAC(damping: 0) }
        expectKronfacError(.invalidArgument, mentioning: ["damping"]) { _ = try FOOF(damping: -1) }
        expectKronfacError(.invalidArgument, mentioning: ["learningRate"]) { _ = try FOOF(learningRate: .nan) }
        expectKronfacError(.invalidArgument, mentioning: ["factorDecay"]) { _ = try EKFAC(factorDecay: 1) }
        expectKronfacError(.invalidArgument, mentioning: ["inverseInterval"]) { _ = try KFAC(inverseInterval: 0) }
        expectKronfacError(.invalidArgument, mentioning: ["statisticsInterval"]) { _ = try FOOF(statisticsInterval: 0) }
        expectKronfacError(.invalidArgument, mentioning: ["klClip"]) { _ = try KFAC(klClip: -1) }
        #expect((try? FOOF(damping: 0)) != nil)  // FOOF may run undamped
    }

    @Test("Defaults and schedules")
    func defaultsAndSchedules() throws {
        let foof = try FOOF()
        #expect(foof.learningRate == 0.3 && foof.damping == 0.3)
        try foof.setLearningRate(0.05)
        try foof.setDamping(2)
        #expect(foof.learningRate == 0.05 && foof.damping == 2)
        expectKronfacError(.invalidArgument, mentioning: ["learningRate"]) { try foof.setLearningRate(-1) }
        expectKronfacError(.invalidArgument) { try KFAC().setDamping(0) }
        // The curvature-scale conventions the defaults are set for.
        #expect(SigmoidCrossEntropy().reduction == .sum && MeanSquaredError().reduction == .mean)
    }

    @Test("update() refuses missing passes and other models, and changes nothing then")
    func updateStateErrors() throws {
        let model = Sequential(seed: 1, Dense(3, 4), Tanh(), Dense(4, 2))
        let x = randomTensor([5, 3], seed: 2)
        let y = randomOneHot(rows: 5, classes: 2, seed: 3)
        let loss = SoftmaxCrossEntropy()
        let kfac = try KFAC()

        expectKronfacError(.state, mentioning: ["no forward pass"]) { try kfac.update(model) }
        let output = try model.forward(x)
        expectKronfacError(.state, mentioning: ["no backward pass"]) { try kfac.update(model) }
        _ = try model.backward(loss.gradient(output, target: y))
        let before = parameterSnapshot(model)
        // K-FAC's statistics step needs the sampled-target pass too.
        #expect(try kfac.needsStatistics)
        expectKronfacError(.state, mentioning: ["curvature"]) { try kfac.update(model) }
        #expect(bitwiseEqual(parameterSnapshot(model), before) && kfac.stepCount == 0)

        var generator = SeededGenerator(seed: 1)
        _ = try model.backward(loss.sampledCurvatureVectors(output, using: &generator), pass: .curvature)
        try kfac.update(model)
        #expect(kfac.stepCount == 1 && !bitwiseEqual(parameterSnapshot(model), before))
        // The same passes cannot drive a second step.
        expectKronfacError(.state, mentioning: ["already used"]) { try kfac.update(model) }
        // An optimizer serves the model it was first used with.
        let other = Sequential(seed: 1, Dense(3, 4), Tanh(), Dense(4, 2))
        expectKronfacError(.state, mentioning: ["another model"]) { try kfac.update(other) }
        // Shared layers are refused.
        let shared = Dense(2, 2)
        expectKronfacError(.invalidArgument, mentioning: ["more than once"]) {
            try SGD().update(Sequential(shared, Tanh(), shared))
        }
    }

    @Test("Non-finite gradients fail in the core and change neither the model nor the optimizer")
    func nonFiniteGradients() throws {
        let model = Sequential(seed: 1, Dense(2, 2))
        let data = try Dataset(inputs: randomTensor([4, 2], seed: 1), targets: randomTensor([4, 2], seed: 2))
        for optimizer in [try SGD() as Optimizer, try FOOF(), try KFAC()] {
            let trainer = try Trainer(model: Sequential(seed: 1, Dense(2, 2)), loss: MeanSquaredError(),
                                      optimizer: optimizer, batchSize: 4)
            try trainer.fit(data, steps: 1)
            // Weights so large that the outputs, and with them the gradients, overflow.
            let layer = trainer.model.denseLayers[0]
            try layer.setParameters(weight: Tensor(shape: [2, 2], repeating: .greatestFiniteMagnitude), bias: layer.bias)
            let before = parameterSnapshot(trainer.model)
            let state = try optimizer.checkpoint()
            // The message is the core's own (the Swift layer checks only the batch, which is finite).
            expectKronfacError(.nonFinite, mentioning: ["layers[0]", "NaN"]) { try trainer.trainStep(input: data.inputs, target: data.targets) }
            #expect(bitwiseEqual(parameterSnapshot(trainer.model), before))
            #expect(try optimizer.checkpoint() == state)
            #expect(trainer.step == 1)
        }
        _ = model
    }
}
