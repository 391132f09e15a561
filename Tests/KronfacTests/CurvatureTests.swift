import Foundation
import Testing
@testable import Kronfac

// Sampled curvature vectors: their second moment over many draws approaches the Hessian of the
// per-example loss with respect to the outputs, and the optimizer receives them unscaled.

/// (1/M) sum over M draws of v v^T for one example (row 0 of `output`), and the mean of v.
private func secondMoment(_ loss: any Loss, output: Tensor, draws: Int, seed: UInt64) throws -> ([[Double]], [Double]) {
    let c = output.columnCount
    // One tensor with the example repeated, so that one call draws every sample.
    let repeated = output.gatheringRows([Int](repeating: 0, count: draws))
    var generator = SeededGenerator(seed: seed)
    let v = try loss.sampledCurvatureVectors(repeated, using: &generator)
    var moment = [[Double]](repeating: [Double](repeating: 0, count: c), count: c)
    var mean = [Double](repeating: 0, count: c)
    for m in 0..<draws {
        for i in 0..<c {
            let vi = Double(v[m, i])
            mean[i] += vi / Double(draws)
            for j in 0..<c { moment[i][j] += vi * Double(v[m, j]) / Double(draws) }
        }
    }
    return (moment, mean)
}

private func expectClose(_ a: [[Double]], _ b: [[Double]], tolerance: Double, _ what: String) {
    let scale = b.flatMap { $0 }.map(abs).max()!
    for i in a.indices {
        for j in a[i].indices {
            #expect(abs(a[i][j] - b[i][j]) <= tolerance * scale, "\(what)[\(i)][\(j)]: sampled \(a[i][j]), exact \(b[i][j])")
        }
    }
}

@Suite("Sampled curvature vectors")
struct CurvatureTests {
    let draws = 40_000

    @Test("Softmax cross-entropy: E[v v^T] -> diag(p) - p p^T")
    func softmax() throws {
        let logits = try Tensor(rows: [[1.0, -0.5, 0.3, 2.0]])
        let e = logits.scalars.map { exp(Double($0)) }
        let p = e.map { $0 / e.reduce(0, +) }
        let hessian = (0..<4).map { i in (0..<4).map { j in (i == j ? p[i] : 0) - p[i] * p[j] } }
        let (moment, mean) = try secondMoment(SoftmaxCrossEntropy(), output: logits, draws: draws, seed: 1)
        expectClose(moment, hessian, tolerance: 0.05, "softmax")
        #expect(mean.allSatisfy { abs($0) < 0.02 })
        // Every vector is p - onehot: its entries sum to 0.
        var generator = SeededGenerator(seed: 2)
        let v = try SoftmaxCrossEntropy().sampledCurvatureVectors(logits.gatheringRows([0, 0, 0]), using: &generator)
        for r in 0..<3 { #expect(abs((0..<4).map { v[r, $0] }.reduce(0, +)) < 1e-6) }
    }

    @Test("Sigmoid cross-entropy: E[v v^T] -> diag(s (1 - s)) / C (mean) or diag(s (1 - s)) (sum)",
          arguments: [OutputReduction.mean, .sum])
    func sigmoid(reduction: OutputReduction) throws {
        let logits = try Tensor(rows: [[0.2, -1.5, 3.0]])
        let s = logits.scalars.map { 1 / (1 + exp(-Double($0))) }
        let weight = reduction == .mean ? 1.0 / 3 : 1
        let hessian = (0..<3).map { i in (0..<3).map { j in i == j ? weight * s[i] * (1 - s[i]) : 0 } }
        let (moment, mean) = try secondMoment(SigmoidCrossEntropy(reduction: reduction), output: logits, draws: draws, seed: 3)
        expectClose(moment, hessian, tolerance: 0.05, "sigmoid")
        #expect(mean.allSatisfy { abs($0) < 0.02 })
    }

    @Test("Mean squared error: E[v v^T] -> (2/C) I (mean) or 2 I (sum)", arguments: [OutputReduction.mean, .sum])
    func squaredError(reduction: OutputReduction) throws {
        let output = try Tensor(rows: [[0.5, -2.0, 1.0, 0.0]])
        let weight = reduction == .mean ? 2.0 / 4 : 2
        let hessian = (0..<4).map { i in (0..<4).map { j in i == j ? weight : 0 } }
        let (moment, mean) = try secondMoment(MeanSquaredError(reduction: reduction), output: output, draws: draws, seed: 4)
        expectClose(moment, hessian, tolerance: 0.05, "mse")
        #expect(mean.allSatisfy { abs($0) < 0.03 * weight.squareRoot() })
    }

    @Test("The Hessian is the Jacobian of the gradient: finite differences of the loss gradient")
    func hessianMatchesGradientJacobian() throws {
        // Ties the sampled targets to the gradient (a sign or scale error in either shows here).
        let logits = try Tensor(rows: [[0.3, -0.7, 1.1]])
        let target = try Tensor(rows: [[0.0, 1.0, 0.0]])
        for loss in [SoftmaxCrossEntropy() as any Loss, SigmoidCrossEntropy(), MeanSquaredError()] {
            let h: Float = 1e-2
            var jacobian = [[Double]](repeating: [0, 0, 0], count: 3)
            for j in 0..<3 {
                var plus = logits, minus = logits
                plus[0, j] += h
                minus[0, j] -= h
                let gp = try loss.gradient(plus, target: target), gm = try loss.gradient(minus, target: target)
                for i in 0..<3 { jacobian[i][j] = Double(gp[0, i] - gm[0, i]) / Double(2 * h) }
            }
            let (moment, _) = try secondMoment(loss, output: logits, draws: draws, seed: 5)
            expectClose(moment, jacobian, tolerance: 0.06, "\(type(of: loss))")
        }
    }

    @Test("The empirical Fisher uses the gradients with the data's targets")
    func empirical() throws {
        let output = randomTensor([4, 3], seed: 1)
        let target = randomOneHot(rows: 4, classes: 3, seed: 2)
        var generator = SeededGenerator(seed: 3)
        let loss = SoftmaxCrossEntropy()
        #expect(try loss.curvatureVectors(output, target: target, fisher: .empirical, using: &generator)
                == loss.gradient(output, target: target))
    }

    @Test("K-FAC's factors are (1/N) sum a~ a~^T and (1/N) sum v v^T of the step's passes")
    func optimizerFactors() throws {
        let model = Sequential(seed: 4, Dense(3, 4), Tanh(), Dense(4, 5))
        let n = 6
        let x = randomTensor([n, 3], seed: 1)
        let y = randomOneHot(rows: n, classes: 5, seed: 2)
        let optimizer = try KFAC()
        let trainer = try Trainer(model: model, loss: SoftmaxCrossEntropy(), optimizer: optimizer, seed: 9)
        // What the trainer will feed: the hidden activations and the backpropagated sampled vectors.
        let hidden = try Tanh().forward(model.denseLayers[0].forward(x))
        let output = try model.forward(x)
        var generator = SeededGenerator(seed: 9, stream: 0x4375_7276, index: 0)
        let v = try SoftmaxCrossEntropy().sampledCurvatureVectors(output, using: &generator)
        try trainer.trainStep(input: x, target: y)

        // Layer 1 (the last): A from the hidden activations with the bias 1, G from v itself.
        let a = try optimizer.factor(layer: 1, activations: true)
        let g = try optimizer.factor(layer: 1, activations: false)
        for i in 0..<5 {
            for j in 0..<5 {
                let ai = { (r: Int) in i < 4 ? Double(hidden[r, i]) : 1 }
                let aj = { (r: Int) in j < 4 ? Double(hidden[r, j]) : 1 }
                let expectedA = (0..<n).map { ai($0) * aj($0) }.reduce(0, +) / Double(n)
                #expect(abs(Double(a[i, j]) - expectedA) < 1e-5)
                let expectedG = (0..<n).map { Double(v[$0, i]) * Double(v[$0, j]) }.reduce(0, +) / Double(n)
                #expect(abs(Double(g[i, j]) - expectedG) < 1e-5)
            }
        }
        // FOOF keeps no gradient factor.
        let foof = try FOOF()
        let other = try Trainer(model: model, loss: SoftmaxCrossEntropy(), optimizer: foof)
        try other.trainStep(input: x, target: y)
        expectKronfacError(.invalidArgument) { _ = try foof.factor(layer: 1, activations: false) }
        #expect(try foof.factor(layer: 0, activations: true)[3, 3] == 1)  // the bias entry of A
    }
}
