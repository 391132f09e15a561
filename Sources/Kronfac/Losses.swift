import Foundation

/// Which output-side vectors the K-FAC curvature pass backpropagates (SPEC.md 2.2).
public enum FisherType: Sendable, Equatable {
    /// One target per example sampled from the model's predictive distribution: the Monte Carlo
    /// estimate of the true Fisher (the K-FAC default; its expected outer product is the loss Hessian).
    case sampled
    /// The gradients with the data's own targets (the empirical Fisher; biased, but needs no extra
    /// backward pass).
    case empirical
}

/// How the terms of one example's outputs combine into the per-example loss.
public enum OutputReduction: Sendable, Equatable {
    /// The mean over the outputs (PyTorch's and Keras's default for elementwise losses).
    case mean
    /// The sum over the outputs (the classic autoencoder benchmarks report this).
    case sum
}

/// A training loss: the batch mean of a per-example loss `l(f_n, y_n)` of the model outputs.
///
/// Besides the value and the per-example gradients it supplies the vectors the K-FAC curvature
/// pass backpropagates: per-example vectors `v` whose expected outer product `E[v v^T]` is the
/// Hessian of `l` with respect to the outputs (a sampled target per example).
public protocol Loss {
    /// The mean over the batch of the per-example loss.
    func value(_ output: Tensor, target: Tensor) throws -> Float
    /// The per-example gradients `dl(f_n, y_n)/df_n` (not divided by the batch size).
    func gradient(_ output: Tensor, target: Tensor) throws -> Tensor
    /// Per-example curvature vectors from one sampled target per example.
    func sampledCurvatureVectors(_ output: Tensor, using generator: inout SeededGenerator) throws -> Tensor
}

extension Loss {
    /// The vectors of the curvature pass for a Fisher type: sampled, or the gradients themselves.
    public func curvatureVectors(
        _ output: Tensor, target: Tensor, fisher: FisherType, using generator: inout SeededGenerator
    ) throws -> Tensor {
        switch fisher {
        case .sampled: return try sampledCurvatureVectors(output, target: target, using: &generator)
        case .empirical: return try gradient(output, target: target)
        }
    }

    // Validates the target too, so that a bad target fails before anything is sampled.
    func sampledCurvatureVectors(
        _ output: Tensor, target: Tensor, using generator: inout SeededGenerator
    ) throws -> Tensor {
        _ = try checkLossShapes(output, target, name: "\(type(of: self))")
        return try sampledCurvatureVectors(output, using: &generator)
    }
}

/// Validates output and target of a loss; returns (examples, outputs per example).
func checkLossShapes(_ output: Tensor, _ target: Tensor, name: String) throws -> (Int, Int) {
    guard output.rank >= 1, output.rowCount > 0, output.columnCount > 0 else {
        throw KronfacError(.shape, "\(name): the output is an empty batch (shape \(output.shape))")
    }
    guard target.rank >= 1, target.rowCount == output.rowCount, target.columnCount == output.columnCount else {
        throw KronfacError(.shape,
            "\(name): target shape \(target.shape) does not match output shape \(output.shape)")
    }
    return (output.rowCount, output.columnCount)
}

func checkOutputShape(_ output: Tensor, name: String) throws -> (Int, Int) {
    guard output.rank >= 1, output.rowCount > 0, output.columnCount > 0 else {
        throw KronfacError(.shape, "\(name): the output is an empty batch (shape \(output.shape))")
    }
    return (output.rowCount, output.columnCount)
}

/// Applies `body` to each example's output row (and target row) and stores the row it writes.
private func mapRows(
    _ output: Tensor, _ target: Tensor?, rows: Int, columns: Int,
    _ body: (_ f: UnsafePointer<Float>, _ y: UnsafePointer<Float>?, _ result: UnsafeMutablePointer<Float>) -> Void
) -> Tensor {
    var result = Tensor(shape: [rows, columns])
    output.withUnsafeBufferPointer { f in
        result.withUnsafeMutableBufferPointer { r in
            if let target {
                target.withUnsafeBufferPointer { y in
                    for n in 0..<rows {
                        body(f.baseAddress! + n * columns, y.baseAddress! + n * columns, r.baseAddress! + n * columns)
                    }
                }
            } else {
                for n in 0..<rows {
                    body(f.baseAddress! + n * columns, nil, r.baseAddress! + n * columns)
                }
            }
        }
    }
    // Same shape as the output (which may have more than two axes).
    return Tensor(uncheckedShape: output.shape, scalars: result.scalars)
}

/// Mean squared error: per example `(1/C) sum_c (f_c - y_c)^2` (`.mean`) or `sum_c (f_c - y_c)^2`
/// (`.sum`), averaged over the batch. As a Gaussian negative log-likelihood its Hessian is
/// `(2/C) I` (or `2 I`), so the sampled curvature vectors are `sqrt(2/C) e` with `e ~ N(0, I)`.
public struct MeanSquaredError: Loss, Sendable {
    public let reduction: OutputReduction

    public init(reduction: OutputReduction = .mean) {
        self.reduction = reduction
    }

    private func weight(_ columns: Int) -> Double {
        reduction == .mean ? 1 / Double(columns) : 1
    }

    public func value(_ output: Tensor, target: Tensor) throws -> Float {
        Float(try meanLoss(output, target: target))
    }

    /// The batch-mean loss accumulated in double.
    func meanLoss(_ output: Tensor, target: Tensor) throws -> Double {
        let (rows, columns) = try checkLossShapes(output, target, name: "MeanSquaredError")
        var total = 0.0
        output.withUnsafeBufferPointer { f in
            target.withUnsafeBufferPointer { y in
                for i in 0..<f.count {
                    let d = Double(f[i]) - Double(y[i])
                    total += d * d
                }
            }
        }
        return total * weight(columns) / Double(rows)
    }

    public func gradient(_ output: Tensor, target: Tensor) throws -> Tensor {
        let (rows, columns) = try checkLossShapes(output, target, name: "MeanSquaredError")
        let scale = Float(2 * weight(columns))
        return mapRows(output, target, rows: rows, columns: columns) { f, y, r in
            for c in 0..<columns { r[c] = scale * (f[c] - y![c]) }
        }
    }

    public func sampledCurvatureVectors(_ output: Tensor, using generator: inout SeededGenerator) throws -> Tensor {
        let (rows, columns) = try checkOutputShape(output, name: "MeanSquaredError")
        let scale = (2 * weight(columns)).squareRoot()
        return mapRows(output, nil, rows: rows, columns: columns) { _, _, r in
            for c in 0..<columns { r[c] = Float(scale * generator.nextNormal()) }
        }
    }
}

/// Softmax cross-entropy on logits: per example `-sum_c y_c log softmax(f)_c`, averaged over the
/// batch. Targets are one-hot rows (or class probabilities). The Hessian is `diag(p) - p p^T`;
/// the sampled curvature vector is `p - onehot(k)` with `k ~ p`.
public struct SoftmaxCrossEntropy: Loss, Sendable {
    public init() {}

    public func value(_ output: Tensor, target: Tensor) throws -> Float {
        Float(try meanLoss(output, target: target))
    }

    func meanLoss(_ output: Tensor, target: Tensor) throws -> Double {
        let (rows, columns) = try checkLossShapes(output, target, name: "SoftmaxCrossEntropy")
        var total = 0.0
        output.withUnsafeBufferPointer { f in
            target.withUnsafeBufferPointer { y in
                for n in 0..<rows {
                    let row = f.baseAddress! + n * columns
                    var maximum = -Double.infinity
                    for c in 0..<columns { maximum = Swift.max(maximum, Double(row[c])) }
                    var sum = 0.0
                    for c in 0..<columns { sum += Foundation.exp(Double(row[c]) - maximum) }
                    let logSum = maximum + Foundation.log(sum)
                    for c in 0..<columns where y[n * columns + c] != 0 {
                        total -= Double(y[n * columns + c]) * (Double(row[c]) - logSum)
                    }
                }
            }
        }
        return total / Double(rows)
    }

    /// softmax of one row into p (in double for accuracy).
    private static func softmax(_ f: UnsafePointer<Float>, _ columns: Int, into p: inout [Double]) {
        var maximum = -Double.infinity
        for c in 0..<columns { maximum = Swift.max(maximum, Double(f[c])) }
        var sum = 0.0
        for c in 0..<columns {
            p[c] = Foundation.exp(Double(f[c]) - maximum)
            sum += p[c]
        }
        for c in 0..<columns { p[c] /= sum }
    }

    public func gradient(_ output: Tensor, target: Tensor) throws -> Tensor {
        let (rows, columns) = try checkLossShapes(output, target, name: "SoftmaxCrossEntropy")
        var p = [Double](repeating: 0, count: columns)
        return mapRows(output, target, rows: rows, columns: columns) { f, y, r in
            SoftmaxCrossEntropy.softmax(f, columns, into: &p)
            // d/df of -sum y log p = p * sum(y) - y (sum(y) = 1 for one-hot rows).
            var mass = 0.0
            for c in 0..<columns { mass += Double(y![c]) }
            for c in 0..<columns { r[c] = Float(p[c] * mass - Double(y![c])) }
        }
    }

    public func sampledCurvatureVectors(_ output: Tensor, using generator: inout SeededGenerator) throws -> Tensor {
        let (rows, columns) = try checkOutputShape(output, name: "SoftmaxCrossEntropy")
        var p = [Double](repeating: 0, count: columns)
        return mapRows(output, nil, rows: rows, columns: columns) { f, _, r in
            SoftmaxCrossEntropy.softmax(f, columns, into: &p)
            var u = generator.nextUnit()
            var k = columns - 1
            for c in 0..<columns {
                if u < p[c] { k = c; break }
                u -= p[c]
            }
            for c in 0..<columns { r[c] = Float(p[c] - (c == k ? 1 : 0)) }
        }
    }
}

/// Sigmoid cross-entropy on logits (independent Bernoulli outputs): per example
/// `sum_c [softplus(f_c) - y_c f_c]`, times `1/C` for `.mean`, averaged over the batch. Targets lie
/// in [0, 1]. The Hessian is `diag(s (1 - s))` (times `1/C`); the sampled curvature vector is
/// `s - b` with `b_c ~ Bernoulli(s_c)` (times `sqrt(1/C)`).
///
/// The default sums over the outputs: the per-example negative log-likelihood, like softmax
/// cross-entropy, and the loss the autoencoder benchmarks report. The optimizers' defaults are
/// set for losses on this scale; `.mean` divides gradients and curvature by `C`.
public struct SigmoidCrossEntropy: Loss, Sendable {
    public let reduction: OutputReduction

    public init(reduction: OutputReduction = .sum) {
        self.reduction = reduction
    }

    private func weight(_ columns: Int) -> Double {
        reduction == .mean ? 1 / Double(columns) : 1
    }

    public func value(_ output: Tensor, target: Tensor) throws -> Float {
        Float(try meanLoss(output, target: target))
    }

    func meanLoss(_ output: Tensor, target: Tensor) throws -> Double {
        let (rows, columns) = try checkLossShapes(output, target, name: "SigmoidCrossEntropy")
        var total = 0.0
        output.withUnsafeBufferPointer { f in
            target.withUnsafeBufferPointer { y in
                for i in 0..<f.count {
                    let x = Double(f[i])
                    // softplus(x) = max(x, 0) + log(1 + e^-|x|), exact for large |x|.
                    total += Swift.max(x, 0) + Foundation.log1p(Foundation.exp(-Swift.abs(x))) - Double(y[i]) * x
                }
            }
        }
        return total * weight(columns) / Double(rows)
    }

    public func gradient(_ output: Tensor, target: Tensor) throws -> Tensor {
        let (_, columns) = try checkLossShapes(output, target, name: "SigmoidCrossEntropy")
        let scale = Float(weight(columns))
        // sigma(f) - y through the core's vectorised sigmoid (libm's expf is a scalar call).
        var result = try ActivationKind.sigmoid.apply(output, context: KernelContext())
        target.withUnsafeBufferPointer { y in
            result.withUnsafeMutableBufferPointer { r in
                for i in r.indices { r[i] = scale * (r[i] - y[i]) }
            }
        }
        return result
    }

    public func sampledCurvatureVectors(_ output: Tensor, using generator: inout SeededGenerator) throws -> Tensor {
        let (rows, columns) = try checkOutputShape(output, name: "SigmoidCrossEntropy")
        let scale = Float(weight(columns).squareRoot())
        return mapRows(output, nil, rows: rows, columns: columns) { f, _, r in
            for c in 0..<columns {
                let s = stableSigmoid(f[c])
                let b: Float = generator.nextUnit() < Double(s) ? 1 : 0
                r[c] = scale * (s - b)
            }
        }
    }
}
