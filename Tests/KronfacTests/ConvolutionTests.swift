import Foundation
import Testing
@testable import Kronfac

// Convolutions, pooling, shape layers and dense layers along a shared axis: forward passes against
// direct loops, backward passes against central differences, the expand/reduce registration, and
// the factors the optimizer collects against their definitions (SPEC.md section 4.2).

/// y[n][o][i][j] = b[o] + sum w[o][c][kh][kw] x[n][c][i s - p + kh d][j s - p + kw d], in double.
private func directConvolution(_ conv: Conv2D, _ x: Tensor) -> [Double] {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let k = conv.kernelHeight, s = conv.stride, p = conv.padding, d = conv.dilation
    let oh = (h + 2 * p - d * (k - 1) - 1) / s + 1, ow = (w + 2 * p - d * (k - 1) - 1) / s + 1
    let weight = conv.weight.scalars, bias = conv.bias?.scalars
    var y = [Double](repeating: 0, count: n * conv.outputChannels * oh * ow)
    for example in 0..<n {
        for o in 0..<conv.outputChannels {
            for i in 0..<oh {
                for j in 0..<ow {
                    var sum = Double(bias?[o] ?? 0)
                    for channel in 0..<c {
                        for kh in 0..<k {
                            for kw in 0..<k {
                                let row = i * s - p + kh * d, column = j * s - p + kw * d
                                guard row >= 0, row < h, column >= 0, column < w else { continue }
                                sum += Double(weight[((o * c + channel) * k + kh) * k + kw])
                                    * Double(x.scalars[((example * c + channel) * h + row) * w + column])
                            }
                        }
                    }
                    y[((example * conv.outputChannels + o) * oh + i) * ow + j] = sum
                }
            }
        }
    }
    return y
}

/// 0.5 * sum (output - target)^2 in double, the loss whose gradient is output - target.
private func squareLoss(_ model: Sequential, _ x: Tensor, _ target: Tensor) throws -> Double {
    let output = try model.forward(x)
    return zip(output.scalars, target.scalars).reduce(0) { $0 + 0.5 * pow(Double($1.0) - Double($1.1), 2) }
}

/// Checks the input gradient and every parameter gradient of `model` against central differences
/// along random directions (float forward passes, so the tolerance is relative, 2e-3).
private func expectGradientsMatchDifferences(_ model: Sequential, input x: Tensor, seed: UInt64) throws {
    let output = try model.forward(x)
    let target = randomTensor(output.shape, seed: seed + 1)
    let residual = try Tensor(shape: output.shape, scalars: zip(output.scalars, target.scalars).map { $0 - $1 })
    let n = Float(x.rowCount)
    let inputGradient = try model.backward(residual)
    let eps: Float = 1e-2

    func directional(_ gradient: [Float], _ direction: [Float]) -> Double {
        zip(gradient, direction).reduce(0) { $0 + Double($1.0) * Double($1.1) }
    }
    // Input: d/dx of the summed loss.
    let dx = randomTensor(x.shape, seed: seed + 2)
    let plus = try Tensor(shape: x.shape, scalars: zip(x.scalars, dx.scalars).map { $0 + eps * $1 })
    let minus = try Tensor(shape: x.shape, scalars: zip(x.scalars, dx.scalars).map { $0 - eps * $1 })
    let numeric = (try squareLoss(model, plus, target) - squareLoss(model, minus, target)) / Double(2 * eps)
    let analytic = directional(inputGradient.scalars, dx.scalars)
    #expect(abs(numeric - analytic) <= 2e-3 * max(1, abs(analytic)), "input: \(numeric) vs \(analytic)")

    // Parameters: the layers' gradients are of the batch-mean loss, hence the factor n.
    for (index, layer) in model.linearMaps.enumerated() {
        let weight = layer.weight, bias = layer.bias
        let gradient = layer.weightGradient.scalars.map { $0 * n } + (layer.biasGradient?.scalars.map { $0 * n } ?? [])
        let direction = randomTensor([gradient.count], seed: seed + 10 + UInt64(index)).scalars
        func loss(at step: Float) throws -> Double {
            let w = zip(weight.scalars, direction).map { $0 + step * $1 }
            let b = bias.map { b in zip(b.scalars, direction[weight.scalarCount...]).map { $0 + step * $1 } }
            try layer.setParameters(weight: Tensor(shape: weight.shape, scalars: w),
                                    bias: try b.map { try Tensor(shape: [$0.count], scalars: $0) })
            return try squareLoss(model, x, target)
        }
        let numeric = (try loss(at: eps) - loss(at: -eps)) / Double(2 * eps)
        try layer.setParameters(weight: weight, bias: bias)
        let analytic = directional(gradient, direction)
        #expect(abs(numeric - analytic) <= 2e-3 * max(1, abs(analytic)), "layer \(index): \(numeric) vs \(analytic)")
    }
}

@Suite("Convolution and shared-axis layers")
struct ConvolutionTests {
    @Test("Conv2D forward equals the direct sum", arguments: [(1, 0, 1), (2, 1, 1), (1, 2, 2), (2, 0, 2)])
    func forwardMatchesDirectLoops(_ geometry: (stride: Int, padding: Int, dilation: Int)) throws {
        let conv = Conv2D(3, 4, kernelSize: 3, stride: geometry.stride, padding: geometry.padding,
                          dilation: geometry.dilation, seed: 5)
        try conv.setParameters(weight: conv.weight, bias: randomTensor([4], seed: 6))
        let x = randomTensor([2, 3, 9, 8], seed: 7)
        let y = try conv.forward(x)
        let expected = directConvolution(conv, x)
        #expect(y.scalarCount == expected.count)
        for (value, reference) in zip(y.scalars, expected) {
            #expect(abs(Double(value) - reference) <= 1e-5 * max(1, abs(reference)))
        }
    }

    @Test("pooling layers against their definitions")
    func poolingValues() throws {
        let x = try Tensor(shape: [1, 1, 3, 4], scalars: (0..<12).map(Float.init))
        #expect(try Pool2D(.average, kernelSize: 2).forward(x).scalars == [2.5, 4.5])
        #expect(try Pool2D(.sum, kernelSize: 2, stride: 1).forward(x).scalars == [10, 14, 18, 26, 30, 34])
        #expect(try GlobalAveragePool().forward(x).scalars == [5.5])
        let sequence = try Tensor(shape: [1, 2, 3], scalars: [1, 2, 3, 5, 6, 7])
        #expect(try SharedAxisPool(.average).forward(sequence).scalars == [3, 4, 5])
        #expect(try SharedAxisPool(.sum).forward(sequence).scalars == [6, 8, 10])
        #expect(try Flatten().forward(x).shape == [1, 12])
        #expect(try Reshape([2, 6]).forward(x).shape == [1, 2, 6])
    }

    @Test("a CNN's gradients equal central differences")
    func convolutionalGradients() throws {
        let model = Sequential(seed: 3,
            Reshape([2, 8, 8]), Conv2D(2, 3, kernelSize: 3, padding: 1), Tanh(), Pool2D(.average, kernelSize: 2),
            Conv2D(3, 4, kernelSize: 2, stride: 1, dilation: 1), Sigmoid(), Pool2D(.sum, kernelSize: 2, stride: 1),
            Flatten(), Dense(16, 3))
        try expectGradientsMatchDifferences(model, input: randomTensor([3, 128], seed: 11), seed: 20)
        let pooled = Sequential(seed: 4,
            Conv2D(2, 3, kernelSize: 3, stride: 2, padding: 1, dilation: 2), Tanh(), GlobalAveragePool(), Dense(3, 2))
        try expectGradientsMatchDifferences(pooled, input: randomTensor([2, 2, 7, 6], seed: 12), seed: 30)
    }

    @Test("a dense layer along a shared axis: gradients equal central differences", arguments: [Pool2D.Kind.average, .sum])
    func sequenceGradients(_ kind: Pool2D.Kind) throws {
        let model = Sequential(seed: 5, Dense(4, 5), Tanh(), SharedAxisPool(kind), Dense(5, 2))
        try expectGradientsMatchDifferences(model, input: randomTensor([3, 6, 4], seed: 13), seed: 40)
        let perPosition = Sequential(seed: 6, Dense(4, 5), Tanh(), Dense(5, 2, bias: false))
        let output = try perPosition.forward(randomTensor([2, 3, 4], seed: 14))
        #expect(output.shape == [2, 3, 2])
        try expectGradientsMatchDifferences(perPosition, input: randomTensor([2, 3, 4], seed: 14), seed: 50)
    }

    @Test("shape errors name the layer and leave it usable")
    func shapeErrors() throws {
        let conv = Conv2D(3, 2, kernelSize: 3)
        expectKronfacError(.shape, mentioning: ["Conv2D", "[n, 3, height, width]"]) { _ = try conv.forward(randomTensor([2, 2, 5, 5], seed: 1)) }
        expectKronfacError(.shape, mentioning: ["smaller"]) { _ = try conv.forward(randomTensor([2, 3, 2, 5], seed: 1)) }
        expectKronfacError(.state) { _ = try conv.backward(randomTensor([2, 2, 3, 3], seed: 1)) }
        _ = try conv.forward(randomTensor([2, 3, 5, 5], seed: 1))
        expectKronfacError(.shape, mentioning: ["output gradient"]) { _ = try conv.backward(randomTensor([2, 2, 2, 3], seed: 1)) }
        #expect(try conv.backward(randomTensor([2, 2, 3, 3], seed: 1)).shape == [2, 3, 5, 5])
        expectKronfacError(.shape) { _ = try Pool2D(.average, kernelSize: 3).forward(randomTensor([1, 1, 2, 2], seed: 1)) }
        expectKronfacError(.shape) { _ = try SharedAxisPool(.sum).forward(randomTensor([2, 3], seed: 1)) }
        expectKronfacError(.shape) { _ = try Reshape([3, 3]).forward(randomTensor([2, 8], seed: 1)) }
    }

    /// Registers `model` with a FOOF optimizer through one step; returns the registrations.
    private func registrations(_ model: Sequential, input: Tensor) throws -> (FOOF, [(positions: Int, reduce: Bool, lossTermsPerExample: Int)]) {
        let optimizer = try FOOF(inverseInterval: 1)
        let output = try model.forward(input)
        _ = try model.backward(randomTensor(output.shape, seed: 2))
        try optimizer.update(model)
        return (optimizer, try (0..<model.linearMaps.count).map { try optimizer.layerParameters($0) })
    }

    @Test("expand or reduce is chosen from what follows the shared axis, and can be overridden")
    func sharedAxisSelection() throws {
        let images = randomTensor([2, 1, 6, 6], seed: 3)
        // Pooled away before the loss: reduce.
        var (_, settings) = try registrations(Sequential(seed: 1, Conv2D(1, 2, kernelSize: 3), GlobalAveragePool(), Dense(2, 3)), input: images)
        #expect(settings[0] == (16, true, 1) && settings[1] == (1, false, 1))
        // Flattened: expand with one loss term per example (KFC).
        (_, settings) = try registrations(Sequential(seed: 1, Conv2D(1, 2, kernelSize: 3), Flatten(), Dense(32, 3)), input: images)
        #expect(settings[0] == (16, false, 1))
        // The axis reaches the loss: expand with one loss term per position.
        (_, settings) = try registrations(Sequential(seed: 1, Dense(3, 4), Tanh(), Dense(4, 2)), input: randomTensor([2, 5, 3], seed: 4))
        #expect(settings[0] == (5, false, 5) && settings[1] == (5, false, 5))
        // Overrides.
        (_, settings) = try registrations(
            Sequential(seed: 1, Conv2D(1, 2, kernelSize: 3, sharedAxis: .expand), GlobalAveragePool(), Dense(2, 3)), input: images)
        #expect(settings[0] == (16, false, 1))
        (_, settings) = try registrations(
            Sequential(seed: 1, Dense(3, 4, sharedAxis: .reduce), Dense(4, 2)), input: randomTensor([2, 5, 3], seed: 4))
        #expect(settings[0].reduce && settings[0].lossTermsPerExample == 1)
    }

    @Test("the activation factor is the definition's, for expand and reduce", arguments: [false, true])
    func activationFactors(_ reduce: Bool) throws {
        let conv = Conv2D(2, 3, kernelSize: 2, padding: 1, seed: 2, sharedAxis: reduce ? .reduce : .expand)
        let model = Sequential(conv, Flatten())
        let x = randomTensor([3, 2, 3, 3], seed: 8)
        let (optimizer, _) = try registrations(model, input: x)
        // Patches by hand: 4x4 locations of 2x2x2 windows over the zero-padded 5x5 input.
        let (n, r, d) = (3, 16, 8)
        var patches = [[Double]](repeating: [Double](repeating: 0, count: d), count: n * r)
        for example in 0..<n {
            for i in 0..<4 {
                for j in 0..<4 {
                    for c in 0..<2 {
                        for kh in 0..<2 {
                            for kw in 0..<2 {
                                let row = i - 1 + kh, column = j - 1 + kw
                                guard row >= 0, row < 3, column >= 0, column < 3 else { continue }
                                patches[example * r + i * 4 + j][(c * 2 + kh) * 2 + kw] =
                                    Double(x.scalars[((example * 2 + c) * 3 + row) * 3 + column])
                            }
                        }
                    }
                }
            }
        }
        // SPEC 4.2: expand (1/(N R)) sum a a^T; reduce (1/N) sum mean_r(a) mean_r(a)^T; 1 appended last.
        var rows: [[Double]] = []
        if reduce {
            for example in 0..<n {
                var mean = [Double](repeating: 0, count: d)
                for position in 0..<r { for j in 0..<d { mean[j] += patches[example * r + position][j] / Double(r) } }
                rows.append(mean + [1])
            }
        } else {
            rows = patches.map { $0 + [1] }
        }
        let factor = try optimizer.factor(layer: 0, activations: true)
        for i in 0...d {
            for j in 0...d {
                let expected = rows.reduce(0) { $0 + $1[i] * $1[j] } / Double(rows.count)
                #expect(abs(Double(factor[i, j]) - expected) <= 1e-5 * max(1, abs(expected)), "A[\(i), \(j)]")
            }
        }
    }
}

@Test("A CNN trained with K-FAC resumes from a checkpoint bit-exactly")
func convolutionCheckpointResumes() throws {
    func makeTrainer() throws -> Trainer {
        let model = Sequential(seed: 9, Reshape([1, 6, 6]), Conv2D(1, 3, kernelSize: 3, padding: 1), Tanh(),
                               Pool2D(.average, kernelSize: 2), Conv2D(3, 4, kernelSize: 2), GlobalAveragePool(), Dense(4, 3))
        return try Trainer(model: model, loss: SoftmaxCrossEntropy(), optimizer: KFAC(inverseInterval: 2), batchSize: 8, seed: 5)
    }
    let data = try Dataset(inputs: randomTensor([24, 36], seed: 1), targets: randomOneHot(rows: 24, classes: 3, seed: 2))
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: dir) }
    let path = dir.appendingPathComponent("cnn.kftrain").path
    let straight = try makeTrainer()
    try straight.fit(data, steps: 3)
    try straight.save(to: path)
    try straight.fit(data, steps: 4)
    let resumed = try makeTrainer()
    try resumed.restore(from: path)
    try resumed.fit(data, steps: 4)
    #expect(bitwiseEqual(parameterSnapshot(straight.model), parameterSnapshot(resumed.model)))
    #expect(parameterSnapshot(straight.model).count == 6)
}

@Test("An optimizer refuses a convolution whose number of locations changed, and changes nothing")
func changedLocationsAreRefused() throws {
    let model = Sequential(seed: 2, Conv2D(1, 2, kernelSize: 3), GlobalAveragePool(), Dense(2, 3))
    let optimizer = try FOOF(inverseInterval: 1)
    for side in [6, 8] {
        let output = try model.forward(randomTensor([2, 1, side, side], seed: UInt64(side)))
        _ = try model.backward(randomTensor(output.shape, seed: 3))
        if side == 6 {
            try optimizer.update(model)
        } else {
            let before = parameterSnapshot(model)
            expectKronfacError(.shape, mentioning: ["layer 0", "16 positions", "36"]) { try optimizer.update(model) }
            #expect(bitwiseEqual(parameterSnapshot(model), before) && optimizer.stepCount == 1)
        }
    }
}
