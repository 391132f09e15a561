import Foundation
import Testing
@testable import Kronfac

// The backward pass of every layer, activation and loss against central finite differences of an
// independent double-precision reference of the forward pass.

/// The forward pass of a model re-implemented in double precision.
private struct Reference {
    enum Op {
        case dense(index: Int, out: Int, inp: Int)
        case activation(ActivationKind)
    }

    var ops: [Op] = []
    var weights: [[Double]] = []
    var biases: [[Double]?] = []

    init(_ model: Sequential) {
        func walk(_ layers: [any Layer]) {
            for layer in layers {
                switch layer {
                case let dense as Dense:
                    ops.append(.dense(index: weights.count, out: dense.outputSize, inp: dense.inputSize))
                    weights.append(dense.weight.scalars.map(Double.init))
                    biases.append(dense.bias.map { $0.scalars.map(Double.init) })
                case let nested as Sequential: walk(nested.layers)
                case is ReLU: ops.append(.activation(.relu))
                case is Tanh: ops.append(.activation(.tanh))
                case is Sigmoid: ops.append(.activation(.sigmoid))
                case is Identity: ops.append(.activation(.identity))
                default: fatalError("no reference for \(layer)")
                }
            }
        }
        walk(model.layers)
    }

    /// Outputs (n x width) and the pre-activations entering every activation (for kink checks).
    func forward(_ x: [Double], rows n: Int) -> (output: [Double], preActivations: [Double]) {
        var a = x
        var pre: [Double] = []
        for op in ops {
            switch op {
            case let .dense(index, out, inp):
                var y = [Double](repeating: 0, count: n * out)
                for r in 0..<n {
                    for o in 0..<out {
                        var s = biases[index]?[o] ?? 0
                        for i in 0..<inp { s += weights[index][o * inp + i] * a[r * inp + i] }
                        y[r * out + o] = s
                    }
                }
                a = y
            case let .activation(kind):
                pre += a
                a = a.map { v in
                    switch kind {
                    case .identity: return v
                    case .relu: return max(0, v)
                    case .tanh: return tanh(v)
                    case .sigmoid: return 1 / (1 + exp(-v))
                    }
                }
            }
        }
        return (a, pre)
    }
}

enum LossCase: CaseIterable, Sendable {
    case mseMean, mseSum, softmax, softmaxSoftTargets, sigmoidMean, sigmoidSum

    var loss: any Loss {
        switch self {
        case .mseMean: return MeanSquaredError()
        case .mseSum: return MeanSquaredError(reduction: .sum)
        case .softmax, .softmaxSoftTargets: return SoftmaxCrossEntropy()
        case .sigmoidMean: return SigmoidCrossEntropy(reduction: .mean)
        case .sigmoidSum: return SigmoidCrossEntropy(reduction: .sum)
        }
    }

    func target(rows: Int, columns: Int, seed: UInt64) -> Tensor {
        switch self {
        case .mseMean, .mseSum: return randomTensor([rows, columns], seed: seed)
        case .softmax: return randomOneHot(rows: rows, classes: columns, seed: seed)
        case .softmaxSoftTargets, .sigmoidMean, .sigmoidSum:
            // Rows of probabilities (softmax) or independent values in (0, 1) (sigmoid).
            var g = SeededGenerator(seed: seed)
            var values = (0..<(rows * columns)).map { _ in Float(g.nextUniform(0.05, 0.95)) }
            if self == .softmaxSoftTargets {
                for r in 0..<rows {
                    let s = values[(r * columns)..<((r + 1) * columns)].reduce(0, +)
                    for c in 0..<columns { values[r * columns + c] /= s }
                }
            }
            return try! Tensor(shape: [rows, columns], scalars: values)
        }
    }

    /// The batch-mean loss in double precision, written from the definitions.
    func reference(_ f: [Double], _ y: [Float], rows: Int, columns: Int) -> Double {
        var total = 0.0
        for r in 0..<rows {
            let row = (0..<columns).map { f[r * columns + $0] }
            let t = (0..<columns).map { Double(y[r * columns + $0]) }
            switch self {
            case .mseMean, .mseSum:
                let s = zip(row, t).map { ($0 - $1) * ($0 - $1) }.reduce(0, +)
                total += self == .mseMean ? s / Double(columns) : s
            case .softmax, .softmaxSoftTargets:
                let m = row.max()!
                let lse = m + log(row.map { exp($0 - m) }.reduce(0, +))
                total -= zip(row, t).map { $1 * ($0 - lse) }.reduce(0, +)
            case .sigmoidMean, .sigmoidSum:
                // -y log s - (1 - y) log(1 - s) with s = sigmoid(f).
                let s = zip(row, t).map { f, y -> Double in
                    let p = 1 / (1 + exp(-f))
                    return -y * log(p) - (1 - y) * log(1 - p)
                }.reduce(0, +)
                total += self == .sigmoidMean ? s / Double(columns) : s
            }
        }
        return total / Double(rows)
    }
}

/// Checks the whole backward pass of `model` with `lossCase` on a random batch.
private func checkBackward(
    _ model: Sequential, lossCase: LossCase, inputSize: Int, outputSize: Int, rows: Int = 5,
    seed: UInt64, sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let x = randomTensor([rows, inputSize], seed: seed)
    let y = lossCase.target(rows: rows, columns: outputSize, seed: seed + 1)
    let loss = lossCase.loss

    // Analytic gradients from the library.
    let output = try model.forward(x)
    let g = try loss.gradient(output, target: y)
    let inputGradient = try model.backward(g)

    let reference = Reference(model)
    let xd = x.scalars.map(Double.init)
    let (refOutput, pre) = reference.forward(xd, rows: rows)
    // The library's forward pass agrees with the reference.
    for (a, b) in zip(output.scalars, refOutput) {
        #expect(abs(Double(a) - b) <= 1e-5 * max(1, abs(b)), "forward \(a) vs \(b)", sourceLocation: sourceLocation)
    }
    #expect(abs(Double(try loss.value(output, target: y)) - lossCase.reference(refOutput, y.scalars, rows: rows, columns: outputSize))
            <= 1e-5 * max(1, abs(lossCase.reference(refOutput, y.scalars, rows: rows, columns: outputSize))),
            sourceLocation: sourceLocation)
    // Keep ReLU inputs away from the kink so that differences are of a smooth function.
    if model.layers.contains(where: { $0 is ReLU }) || model.layers.contains(where: { $0 is Sequential }) {
        let margin = pre.map(abs).min() ?? 1
        try #require(margin > 1e-3, "a pre-activation is too close to 0 for finite differences", sourceLocation: sourceLocation)
    }

    let h = 1e-5
    func objective(_ ref: Reference, _ input: [Double]) -> Double {
        lossCase.reference(ref.forward(input, rows: rows).output, y.scalars, rows: rows, columns: outputSize)
    }
    func compare(_ analytic: [Float], _ numeric: [Double], _ what: String) {
        let scale = max(numeric.map(abs).max() ?? 0, 1e-6)
        for (i, (a, n)) in zip(analytic, numeric).enumerated() {
            #expect(abs(Double(a) - n) <= 2e-4 * scale + 1e-3 * abs(n),
                    "\(what)[\(i)]: backward \(a), finite differences \(n)", sourceLocation: sourceLocation)
        }
    }

    for (index, layer) in model.denseLayers.enumerated() {
        var numericW = [Double](repeating: 0, count: reference.weights[index].count)
        for j in numericW.indices {
            var plus = reference, minus = reference
            plus.weights[index][j] += h
            minus.weights[index][j] -= h
            numericW[j] = (objective(plus, xd) - objective(minus, xd)) / (2 * h)
        }
        compare(layer.weightGradient.scalars, numericW, "layer \(index) weight gradient")
        if let bias = reference.biases[index] {
            var numericB = [Double](repeating: 0, count: bias.count)
            for j in numericB.indices {
                var plus = reference, minus = reference
                plus.biases[index]![j] += h
                minus.biases[index]![j] -= h
                numericB[j] = (objective(plus, xd) - objective(minus, xd)) / (2 * h)
            }
            compare(layer.biasGradient!.scalars, numericB, "layer \(index) bias gradient")
        } else {
            #expect(layer.biasGradient == nil, sourceLocation: sourceLocation)
        }
    }
    // Input gradients are per-example gradients of the per-example loss: rows x d(mean loss)/dx.
    var numericX = [Double](repeating: 0, count: xd.count)
    for j in xd.indices {
        var plus = xd, minus = xd
        plus[j] += h
        minus[j] -= h
        numericX[j] = Double(rows) * (objective(reference, plus) - objective(reference, minus)) / (2 * h)
    }
    compare(inputGradient.scalars, numericX, "input gradient")
}

@Suite("Backward pass against finite differences")
struct GradientTests {
    @Test("Dense with and without bias, every activation", arguments: [true, false], ["identity", "relu", "tanh", "sigmoid"])
    func activations(bias: Bool, activation: String) throws {
        let act: any Layer = switch activation {
        case "relu": ReLU()
        case "tanh": Tanh()
        case "sigmoid": Sigmoid()
        default: Identity()
        }
        let model = Sequential(seed: 11, Dense(4, 6, bias: bias), act, Dense(6, 3, bias: bias))
        // Non-zero biases, so that their gradients flow through the activation too.
        for layer in model.denseLayers where bias {
            try layer.setParameters(weight: layer.weight, bias: randomTensor([layer.outputSize], seed: 5, scale: 0.3))
        }
        try checkBackward(model, lossCase: .mseMean, inputSize: 4, outputSize: 3, seed: 21)
    }

    @Test("Every loss", arguments: LossCase.allCases)
    func losses(lossCase: LossCase) throws {
        let model = Sequential(seed: 3, Dense(3, 5), Tanh(), Dense(5, 4))
        try checkBackward(model, lossCase: lossCase, inputSize: 3, outputSize: 4, seed: 31)
    }

    @Test("A deep nested model with every layer kind")
    func deepModel() throws {
        let model = Sequential(seed: 7,
            Dense(5, 7, initialization: .he), ReLU(),
            Sequential(Dense(7, 6), Tanh(), Dense(6, 6, bias: false)), Sigmoid(),
            Dense(6, 4), Identity())
        try checkBackward(model, lossCase: .softmax, inputSize: 5, outputSize: 4, rows: 6, seed: 41)
    }

    @Test("Higher-rank inputs are seen as rows of features")
    func higherRankInput() throws {
        let model = Sequential(seed: 1, Dense(6, 2))
        let x = randomTensor([3, 2, 3], seed: 2)
        let flat = try x.reshaped(to: [3, 6])
        #expect(try model.forward(x) == model.forward(flat))
    }

    @Test("The curvature pass records output gradients and leaves parameter gradients alone")
    func curvaturePassKeepsGradients() throws {
        let model = Sequential(seed: 2, Dense(3, 4), Tanh(), Dense(4, 2))
        let x = randomTensor([5, 3], seed: 1)
        let output = try model.forward(x)
        _ = try model.backward(SoftmaxCrossEntropy().gradient(output, target: randomOneHot(rows: 5, classes: 2, seed: 3)))
        let before = model.denseLayers.map(\.weightGradient)
        var generator = SeededGenerator(seed: 9)
        let v = try SoftmaxCrossEntropy().sampledCurvatureVectors(output, using: &generator)
        _ = try model.backward(v, pass: .curvature)
        #expect(model.denseLayers.map(\.weightGradient) == before)
        #expect(model.denseLayers.last!.lastCurvatureGradient == v)
    }

    @Test("Activations run in place inside a model, yet tensors held by the caller keep their values")
    func inPlaceActivationsKeepValueSemantics() throws {
        func makeModel() -> Sequential {
            Sequential(seed: 4, Tanh(), Dense(3, 4), ReLU(), Dense(4, 2), Sigmoid())
        }
        let model = makeModel()
        let x1 = randomTensor([5, 3], seed: 1), g1 = randomTensor([5, 2], seed: 2)
        let x2 = randomTensor([5, 3], seed: 3), g2 = randomTensor([5, 2], seed: 4)
        // Copies of the scalars in fresh storage, so that a write through shared storage shows.
        func snapshot(_ t: Tensor) -> [Float] { t.scalars.map { $0 } }
        let out1 = try model.forward(x1)
        let dx1 = try model.backward(g1)
        let saved = [x1, g1, out1, dx1].map(snapshot)
        let out2 = try model.forward(x2)
        let dx2 = try model.backward(g2)
        #expect([x1, g1, out1, dx1].map(snapshot) == saved)
        #expect(x2.scalars == randomTensor([5, 3], seed: 3).scalars && g2.scalars == randomTensor([5, 2], seed: 4).scalars)
        // The second passes and what the layers recorded equal those of a model that saw only them.
        let fresh = makeModel()
        #expect(try fresh.forward(x2) == out2)
        #expect(try fresh.backward(g2) == dx2)
        #expect(fresh.denseLayers.map(\.weightGradient) == model.denseLayers.map(\.weightGradient))
        #expect(fresh.denseLayers.map(\.biasGradient) == model.denseLayers.map(\.biasGradient))
    }
}
