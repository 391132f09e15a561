import Foundation
import Testing
@testable import Kronfac

/// Solves M X = B for symmetric positive definite M (n x n) and B (n x m), in double.
private func solve(_ m: [[Double]], _ b: [[Double]]) -> [[Double]] {
    let n = m.count
    var a = m, x = b
    for k in 0..<n {
        let pivot = a[k][k]
        for i in (k + 1)..<n {
            let f = a[i][k] / pivot
            if f == 0 { continue }
            for j in k..<n { a[i][j] -= f * a[k][j] }
            for j in 0..<x[i].count { x[i][j] -= f * x[k][j] }
        }
    }
    for k in stride(from: n - 1, through: 0, by: -1) {
        for j in 0..<x[k].count {
            var s = x[k][j]
            for i in (k + 1)..<n { s -= a[k][i] * x[i][j] }
            x[k][j] = s / a[k][k]
        }
    }
    return x
}

@Suite("The optimizers' batch step")
struct BatchStepTests {
    /// A model, a batch and the gradient pass of softmax cross-entropy.
    private func prepared(seed: UInt64) throws -> (Sequential, Tensor) {
        let model = Sequential(seed: seed, Dense(6, 5), Tanh(), Dense(5, 3))
        let x = randomTensor([8, 6], seed: seed + 1)
        let output = try model.forward(x)
        _ = try model.backward(SoftmaxCrossEntropy().gradient(output, target: randomOneHot(rows: 8, classes: 3, seed: seed + 2)))
        return (model, x)
    }

    @Test("SGD through the batch form moves every parameter by -lr times its gradient")
    func sgd() throws {
        let (model, _) = try prepared(seed: 3)
        let before = parameterSnapshot(model)
        let gradients = model.denseLayers.flatMap { [$0.weightGradient] + ($0.bias == nil ? [] : [$0.biasGradient!]) }
        try SGD(learningRate: 0.1, momentum: 0).update(model)
        for (p, (w0, g)) in zip(parameterSnapshot(model), zip(before, gradients)) {
            for i in 0..<p.scalarCount {
                #expect(abs(p.scalars[i] - (w0.scalars[i] - 0.1 * g.scalars[i])) <= 1e-6 * max(1, abs(w0.scalars[i])))
            }
        }
        // The gradients still describe the pass, not the updated parameters.
        #expect(model.denseLayers.flatMap { [$0.weightGradient] + ($0.bias == nil ? [] : [$0.biasGradient!]) } == gradients)
    }

    @Test("FOOF's first step is -lr times the gradient times (A + damping I)^-1, A the batch's input moment")
    func foof() throws {
        let (model, x) = try prepared(seed: 5)
        // The inputs of each dense layer in the last forward pass, with the bias's constant 1.
        let hidden = try Tanh().forward(try model.denseLayers[0].forward(x))
        _ = try model.backward(SoftmaxCrossEntropy().gradient(model.forward(x), target: randomOneHot(rows: 8, classes: 3, seed: 7)))
        let inputs = [x, hidden]
        let before = model.denseLayers.map { ($0.weight, $0.bias!) }
        let gradients = model.denseLayers.map { ($0.weightGradient, $0.biasGradient!) }
        let lr = 0.3, damping = 0.5
        try FOOF(learningRate: Float(lr), damping: Float(damping)).update(model)
        for (index, layer) in model.denseLayers.enumerated() {
            let input = inputs[index], n = input.rowCount, d = input.columnCount + 1
            // A = (1/n) sum [a; 1][a; 1]^T + damping I.
            var a = [[Double]](repeating: [Double](repeating: 0, count: d), count: d)
            for r in 0..<n {
                let row = (0..<(d - 1)).map { Double(input[r, $0]) } + [1]
                for i in 0..<d { for j in 0..<d { a[i][j] += row[i] * row[j] / Double(n) } }
            }
            for i in 0..<d { a[i][i] += damping }
            // Direction^T = A^-1 (grad~)^T, grad~ = [dW db].
            let (dw, db) = gradients[index]
            let gradT = (0..<d).map { i in (0..<layer.outputSize).map { o in
                Double(i < d - 1 ? dw[o, i] : db.scalars[o]) } }
            let direction = solve(a, gradT)
            for o in 0..<layer.outputSize {
                for i in 0..<d {
                    let old = Double(i < d - 1 ? before[index].0[o, i] : before[index].1.scalars[o])
                    let expected = old - lr * direction[i][o]
                    let actual = Double(i < d - 1 ? layer.weight[o, i] : layer.bias!.scalars[o])
                    #expect(abs(actual - expected) <= 1e-4 * max(1, abs(expected)), "layer \(index) [\(o), \(i)]")
                }
            }
        }
    }
}
