import Foundation
internal import CKronfac

/// Which backward pass a gradient belongs to.
public enum BackwardPass: Sendable {
    /// The gradient of the training loss: parameter gradients are computed.
    case gradient
    /// The curvature pass of K-FAC and EKFAC (gradients of sampled-target losses): only the
    /// layers' output gradients are recorded for the optimizer; parameter gradients are kept.
    case curvature
}

/// A differentiable layer of a model, working on batches (first axis = examples).
///
/// `forward` keeps what `backward` needs, so a backward pass refers to the last forward pass.
/// Gradients travelling backward are per-example gradients of the per-example loss (not divided
/// by the batch size); parameter gradients are those of the batch-mean loss.
public protocol Layer: AnyObject {
    /// The outputs of a batch of inputs.
    func forward(_ input: Tensor) throws -> Tensor
    /// Given the gradients with respect to the outputs of the last forward pass, records what the
    /// pass needs and returns the gradients with respect to its inputs.
    func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor
}

extension Layer {
    /// The backward pass of the training loss.
    public func backward(_ outputGradient: Tensor) throws -> Tensor {
        try backward(outputGradient, pass: .gradient)
    }
}

/// How K-FAC, EKFAC and FOOF factor a layer applied along a shared axis (positions, tokens, the
/// locations of a convolution), after Eschenhagen et al. 2023, "Kronecker-Factored Approximate
/// Curvature for Modern Neural Network Architectures".
public enum SharedAxisApproximation: Sendable {
    /// Decided from the model: `.reduce` when the shared axis is pooled away (`GlobalAveragePool`,
    /// `SharedAxisPool`) before anything flattens it; otherwise `.expand`, with one loss term per
    /// example when a `Flatten` (or a `Reshape`) comes first (KFC, Grosse & Martens 2016) and one
    /// per position when the axis reaches the loss.
    case automatic
    /// K-FAC-expand: positions are treated like extra examples (exact for per-position losses).
    case expand
    /// K-FAC-reduce: activations averaged and gradients summed over the positions (exact when the
    /// axis is summed or averaged before the loss; cheaper, the statistics are per example).
    case reduce
}

/// A layer whose first layer in a model may skip the input gradient (nobody reads it).
protocol InputGradientSkipping: Layer {
    func backward(_ outputGradient: Tensor, pass: BackwardPass, needsInputGradient: Bool) throws -> Tensor?
}

/// How a dense layer's weights are drawn (biases start at zero).
public enum Initialization: Sendable {
    /// He et al. 2015: normal with standard deviation sqrt(2 / inputs), for ReLU networks.
    case he
    /// Glorot & Bengio 2010: uniform in +-sqrt(6 / (inputs + outputs)), for tanh and sigmoid.
    case glorot
}

/// Checks that a batch is a non-empty matrix of the expected width; returns its row count.
func checkBatch(_ tensor: Tensor, columns: Int, role: String) throws -> Int {
    guard tensor.rank >= 2 || (tensor.rank == 1 && columns == 1) else {
        throw KronfacError(.shape, "\(role) must have a batch axis first; got shape \(tensor.shape)")
    }
    let rows = tensor.rowCount
    guard rows > 0 else {
        throw KronfacError(.shape, "\(role) is an empty batch (shape \(tensor.shape))")
    }
    guard tensor.columnCount == columns else {
        throw KronfacError(.shape,
            "\(role) has \(tensor.columnCount) values per example (shape \(tensor.shape)), expected \(columns)")
    }
    return rows
}

/// A fully connected layer `y = W x + b` with `W` of shape `[outputSize, inputSize]`.
public final class Dense: Layer, InputGradientSkipping {
    public let inputSize: Int
    public let outputSize: Int
    /// Whether the layer has a bias vector.
    public let hasBias: Bool
    /// The weights, `[outputSize, inputSize]`.
    public private(set) var weight: Tensor
    /// The bias, `[outputSize]`, or nil.
    public private(set) var bias: Tensor?
    /// The gradient of the batch-mean loss with respect to `weight`, from the last gradient pass
    /// (zero before the first).
    ///
    /// Formed on first access: the optimizers take the layer's inputs and output gradients
    /// instead (the weight gradient is their product), which is cheaper than forming it.
    public var weightGradient: Tensor {
        materializeGradients()
        return weightGradientStorage
    }
    /// The gradient of the batch-mean loss with respect to `bias`, from the last gradient pass.
    public var biasGradient: Tensor? {
        materializeGradients()
        return biasGradientStorage
    }
    private var weightGradientStorage: Tensor
    private var biasGradientStorage: Tensor?
    /// Whether the storage above is older than the last gradient pass.
    private var gradientsPending = false

    // What the optimizer observes: the inputs of the last forward pass and the per-example output
    // gradients of each pass, tagged with the forward pass they belong to. `gradientInput` is the
    // input of the last gradient pass (a later forward pass replaces `lastInput`, not it).
    // Inputs are kept as matrices of examples * positions rows (positions = R, the length of the
    // shared axis; 1 for a plain dense layer).
    private(set) var lastInput: Tensor?
    private(set) var lastExamples = 0
    private(set) var gradientInput: Tensor?
    private(set) var gradientExamples = 0
    /// The length of the shared axis in the last forward pass (1 without one).
    private(set) var positions = 1
    private(set) var lastOutputGradient: Tensor?
    private(set) var lastCurvatureGradient: Tensor?
    private(set) var forwardCount: UInt64 = 0
    private(set) var outputGradientForward: UInt64 = 0
    private(set) var curvatureGradientForward: UInt64 = 0
    /// The forward pass whose gradients the optimizer last consumed (a pass is used once).
    var updatedForward: UInt64 = 0

    private var contextStorage: KernelContext?

    /// How the optimizers factor the layer's curvature when it is applied along a shared axis.
    public var sharedAxis: SharedAxisApproximation

    /// A dense layer with seeded initial weights.
    ///
    /// Given inputs of shape `[n, inputSize]` it maps each example; given `[n, R, inputSize]` it is
    /// applied at each of the R positions of every example (a shared axis: tokens, nodes), with
    /// outputs `[n, R, outputSize]`.
    /// - Parameters:
    ///   - inputSize: the number of inputs, at least 1.
    ///   - outputSize: the number of outputs, at least 1.
    ///   - bias: whether to add a bias vector (initialised to zero).
    ///   - initialization: He (ReLU) or Glorot (tanh, sigmoid, linear).
    ///   - seed: the seed of the weights; `Sequential(seed:)` reseeds its layers.
    ///   - sharedAxis: K-FAC-expand or -reduce along a shared axis (automatic: see
    ///     `SharedAxisApproximation`).
    public init(
        _ inputSize: Int, _ outputSize: Int, bias: Bool = true,
        initialization: Initialization = .glorot, seed: UInt64 = 0,
        sharedAxis: SharedAxisApproximation = .automatic
    ) {
        precondition(inputSize >= 1 && outputSize >= 1, "Dense needs at least one input and one output")
        self.inputSize = inputSize
        self.outputSize = outputSize
        self.hasBias = bias
        self.initialization = initialization
        self.sharedAxis = sharedAxis
        self.weight = Tensor(shape: [outputSize, inputSize])
        self.bias = bias ? Tensor(shape: [outputSize]) : nil
        self.weightGradientStorage = Tensor(shape: [outputSize, inputSize])
        self.biasGradientStorage = bias ? Tensor(shape: [outputSize]) : nil
        initialize(seed: seed)
    }

    /// The scheme used by `initialize(seed:)`.
    public let initialization: Initialization

    /// Draws new weights from the layer's initialisation scheme and zeroes the bias.
    public func initialize(seed: UInt64) {
        var generator = SeededGenerator(seed: seed, stream: 0x44_656E_7365)  // "Dense"
        let fanIn = Double(inputSize), fanOut = Double(outputSize)
        let values: [Float]
        switch initialization {
        case .he:
            let std = (2.0 / fanIn).squareRoot()
            values = (0..<(inputSize * outputSize)).map { _ in Float(std * generator.nextNormal()) }
        case .glorot:
            let limit = (6.0 / (fanIn + fanOut)).squareRoot()
            values = (0..<(inputSize * outputSize)).map { _ in Float(generator.nextUniform(-limit, limit)) }
        }
        weight = Tensor(uncheckedShape: [outputSize, inputSize], scalars: values)
        if hasBias { bias = Tensor(shape: [outputSize]) }
    }

    /// Replaces the parameters.
    /// - Throws: `KronfacError(.shape)` when a shape differs from the layer's, or the bias is
    ///   given to a layer without one (or missing); `.nonFinite` for NaN or infinity. On error the
    ///   layer is unchanged.
    public func setParameters(weight newWeight: Tensor, bias newBias: Tensor? = nil) throws {
        guard newWeight.shape == [outputSize, inputSize] else {
            throw KronfacError(.shape, "weight has shape \(newWeight.shape), the layer needs [\(outputSize), \(inputSize)]")
        }
        if hasBias {
            guard let newBias else { throw KronfacError(.shape, "the layer has a bias but none was given") }
            guard newBias.scalarCount == outputSize, newBias.rank == 1 else {
                throw KronfacError(.shape, "bias has shape \(newBias.shape), the layer needs [\(outputSize)]")
            }
            guard newBias.isFinite else { throw KronfacError(.nonFinite, "bias contains NaN or infinity") }
        } else if newBias != nil {
            throw KronfacError(.shape, "the layer has no bias but one was given")
        }
        guard newWeight.isFinite else { throw KronfacError(.nonFinite, "weight contains NaN or infinity") }
        weight = newWeight
        bias = newBias
    }

    var context: KernelContext {
        get throws {
            if let contextStorage { return contextStorage }
            let created = try KernelContext()
            contextStorage = created
            return created
        }
    }

    /// Forms the parameter gradients of the last gradient pass: dW = (1/n) G^T X, db = (1/n) G^T 1.
    private func materializeGradients() {
        guard gradientsPending, let input = gradientInput, let g = lastOutputGradient else { return }
        gradientsPending = false
        let n = input.rowCount, out = outputSize, inp = inputSize
        let scale = 1 / Float(gradientExamples)
        var dw = weightGradientStorage
        var db = biasGradientStorage
        let formed: Bool = (try? {
            let context = try self.context
            try g.withUnsafeBufferPointer { gp in
                try input.withUnsafeBufferPointer { x in
                    try dw.withUnsafeMutableBufferPointer { w in
                        try context.gemm(transposeA: true, transposeB: false, m: out, n: inp, k: n,
                                         alpha: scale, a: gp.baseAddress!, lda: out, b: x.baseAddress!, ldb: inp,
                                         beta: 0, c: w.baseAddress!, ldc: inp)
                    }
                }
            }
            return true
        }()) ?? false
        if !formed {
            // The kernel only fails without memory for its context; the plain sum needs none.
            dw.withUnsafeMutableBufferPointer { w in
                for o in 0..<out {
                    for i in 0..<inp {
                        var sum: Float = 0
                        for r in 0..<n { sum += g.scalars[r * out + o] * input.scalars[r * inp + i] }
                        w[o * inp + i] = scale * sum
                    }
                }
            }
        }
        if db != nil {
            db!.withUnsafeMutableBufferPointer { b in
                g.withUnsafeBufferPointer { gp in
                    for o in 0..<out {
                        var sum: Float = 0
                        for r in 0..<n { sum += gp[r * out + o] }
                        b[o] = scale * sum
                    }
                }
            }
        }
        weightGradientStorage = dw
        biasGradientStorage = db
    }

    /// The name used in error messages.
    var name: String { "Dense(\(inputSize), \(outputSize))" }

    public func forward(_ input: Tensor) throws -> Tensor {
        if input.rank == 3, input.shape[2] == inputSize {
            let (n, r) = (input.shape[0], input.shape[1])
            guard n > 0, r > 0 else { throw KronfacError(.shape, "\(name) input is empty (shape \(input.shape))") }
            let rows = try forward(rows: Tensor(uncheckedShape: [n * r, inputSize], scalars: input.scalars), examples: n)
            return Tensor(uncheckedShape: [n, r, outputSize], scalars: rows.scalars)
        }
        let n = try checkBatch(input, columns: inputSize, role: "\(name) input")
        let matrix = input.rank == 2 ? input : Tensor(uncheckedShape: [n, inputSize], scalars: input.scalars)
        return try forward(rows: matrix, examples: n)
    }

    /// The forward pass on a matrix of `examples * R` rows (row `n * R + r`: example n, position r).
    func forward(rows input: Tensor, examples: Int) throws -> Tensor {
        let n = input.rowCount
        precondition(input.rank == 2 && input.columnCount == inputSize && examples > 0 && n % examples == 0)
        let context = try self.context
        let out = outputSize, inp = inputSize
        let output = try Tensor.matrix(rows: n, columns: out) { y in
            try input.withUnsafeBufferPointer { x in
                try weight.withUnsafeBufferPointer { w in
                    var beta: Float = 0
                    if let bias {
                        // Y = 1 b^T, then Y += X W^T. Row copies: a k = 1 product takes BLAS's
                        // single-threaded small-matrix path and cost more than the tanh after it;
                        // the copies stand in for the zeroing pass that beta = 0 would make.
                        bias.withUnsafeBufferPointer { b in
                            for row in 0..<n {
                                (y.baseAddress! + row * out).initialize(from: b.baseAddress!, count: out)
                            }
                        }
                        beta = 1
                    }
                    try context.gemm(transposeA: false, transposeB: true, m: n, n: out, k: inp,
                                     alpha: 1, a: x.baseAddress!, lda: inp, b: w.baseAddress!, ldb: inp,
                                     beta: beta, c: y.baseAddress!, ldc: out)
                }
            }
        }
        lastInput = input
        lastExamples = examples
        positions = n / examples
        forwardCount &+= 1
        return output
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        try backward(outputGradient, pass: pass, needsInputGradient: true)!
    }

    /// The backward pass; the first layer of a model skips the input gradient nobody reads.
    func backward(_ outputGradient: Tensor, pass: BackwardPass, needsInputGradient: Bool) throws -> Tensor? {
        guard lastInput != nil else {
            throw KronfacError(.state, "\(name).backward called before forward")
        }
        if positions > 1 || outputGradient.rank == 3 {
            let expected = [lastExamples, positions, outputSize]
            guard outputGradient.shape == expected else {
                throw KronfacError(.shape,
                    "\(name) output gradient has shape \(outputGradient.shape), the last forward pass gave \(expected)")
            }
            let rows = Tensor(uncheckedShape: [lastExamples * positions, outputSize], scalars: outputGradient.scalars)
            guard let dx = try backward(rows: rows, pass: pass, needsInputGradient: needsInputGradient) else { return nil }
            return Tensor(uncheckedShape: [lastExamples, positions, inputSize], scalars: dx.scalars)
        }
        let rows = try checkBatch(outputGradient, columns: outputSize, role: "\(name) output gradient")
        guard rows == lastExamples else {
            throw KronfacError(.shape, "output gradient has \(rows) examples, the last forward pass had \(lastExamples)")
        }
        let matrix = outputGradient.rank == 2
            ? outputGradient : Tensor(uncheckedShape: [rows, outputSize], scalars: outputGradient.scalars)
        return try backward(rows: matrix, pass: pass, needsInputGradient: needsInputGradient)
    }

    /// The backward pass on the rows layout of `forward(rows:examples:)`: the per-example loss's
    /// gradients with respect to the outputs at every position.
    func backward(rows outputGradient: Tensor, pass: BackwardPass, needsInputGradient: Bool) throws -> Tensor? {
        guard let input = lastInput else {
            throw KronfacError(.state, "\(name).backward called before forward")
        }
        let n = input.rowCount
        precondition(outputGradient.rank == 2 && outputGradient.rowCount == n && outputGradient.columnCount == outputSize)
        let context = try self.context
        let out = outputSize, inp = inputSize
        if pass == .gradient {
            // The parameter gradients are formed lazily (see `weightGradient`).
            gradientInput = input
            gradientExamples = lastExamples
            lastOutputGradient = outputGradient
            outputGradientForward = forwardCount
            gradientsPending = true
        } else {
            lastCurvatureGradient = outputGradient
            curvatureGradientForward = forwardCount
        }
        guard needsInputGradient else { return nil }
        // dX = G W.
        return try Tensor.matrix(rows: n, columns: inp) { dx in
            try outputGradient.withUnsafeBufferPointer { g in
                try weight.withUnsafeBufferPointer { w in
                    try context.gemm(transposeA: false, transposeB: false, m: n, n: inp, k: out,
                                     alpha: 1, a: g.baseAddress!, lda: out, b: w.baseAddress!, ldb: inp,
                                     beta: 0, c: dx.baseAddress!, ldc: inp)
                }
            }
        }
    }

    /// The number of trainable scalars.
    public var parameterCount: Int { inputSize * outputSize + (hasBias ? outputSize : 0) }

    /// Calls `body` with the parameters (the optimizer updates them in place) and the batch of the
    /// last gradient pass: its `examples` inputs `x` (examples * R rows) and the output gradients
    /// of the batch-mean loss `gs = G / examples`, whose product `gs^T [x 1]` is the parameter
    /// gradient.
    func withStepBatch<R>(
        _ body: (_ weight: UnsafeMutablePointer<Float>, _ bias: UnsafeMutablePointer<Float>?,
                 _ x: UnsafePointer<Float>, _ gs: UnsafePointer<Float>, _ examples: Int) throws -> R
    ) throws -> R {
        guard let input = gradientInput, let g = lastOutputGradient else {
            throw KronfacError(.state, "\(name) has no gradient pass")
        }
        let rows = gradientExamples
        let scale = 1 / Float(rows)
        var gs = g
        gs.withUnsafeMutableBufferPointer { buffer in
            for i in buffer.indices { buffer[i] *= scale }
        }
        return try weight.withUnsafeMutableBufferPointer { w in
            try input.withUnsafeBufferPointer { x in
                try gs.withUnsafeBufferPointer { gsp in
                    if bias != nil {
                        return try bias!.withUnsafeMutableBufferPointer { b in
                            try body(w.baseAddress!, b.baseAddress!, x.baseAddress!, gsp.baseAddress!, rows)
                        }
                    }
                    return try body(w.baseAddress!, nil, x.baseAddress!, gsp.baseAddress!, rows)
                }
            }
        }
    }

    /// Restores parameters read from a checkpoint (shapes already validated).
    func restoreParameters(weight: [Float], bias: [Float]?) {
        self.weight = Tensor(uncheckedShape: [outputSize, inputSize], scalars: weight)
        if let bias { self.bias = Tensor(uncheckedShape: [outputSize], scalars: bias) }
    }

    /// Drops what the last passes recorded (so a stale observation cannot be reused).
    func forgetPasses() {
        materializeGradients()
        gradientInput = nil
        lastInput = nil
        lastOutputGradient = nil
        lastCurvatureGradient = nil
    }
}

// MARK: - Activations

/// The elementwise nonlinearities; they keep their last output, from which every derivative
/// here follows (ReLU: y > 0, tanh: 1 - y^2, sigmoid: y (1 - y)). The loops are the core's
/// (kf_activation_forward/backward), vectorised; NaN stays NaN so that bad data is caught.
enum ActivationKind: Sendable {
    case identity, relu, tanh, sigmoid

    var core: kf_activation {
        switch self {
        case .identity: return KF_ACTIVATION_IDENTITY
        case .relu: return KF_ACTIVATION_RELU
        case .tanh: return KF_ACTIVATION_TANH
        case .sigmoid: return KF_ACTIVATION_SIGMOID
        }
    }

    func apply(_ input: Tensor, context: KernelContext) throws -> Tensor {
        if self == .identity { return input }
        let scalars = try input.withUnsafeBufferPointer { x in
            try [Float](unsafeUninitializedCapacity: x.count) { y, initialized in
                try context.check(kf_activation_forward(context.handle, core, x.count, x.baseAddress, y.baseAddress))
                initialized = x.count
            }
        }
        return Tensor(uncheckedShape: input.shape, scalars: scalars)
    }

    /// `apply` writing into the tensor's own storage (copied first only when shared).
    func apply(inPlace tensor: inout Tensor, context: KernelContext) throws {
        if self == .identity { return }
        try tensor.withUnsafeMutableBufferPointer { x in
            try context.check(kf_activation_forward(context.handle, core, x.count, x.baseAddress, x.baseAddress))
        }
    }

    /// `derivativeTimes` writing into the gradient's own storage (copied first only when shared,
    /// so never into `output`'s).
    func derivativeTimes(inPlace gradient: inout Tensor, output: Tensor, context: KernelContext) throws {
        if self == .identity { return }
        try output.withUnsafeBufferPointer { y in
            try gradient.withUnsafeMutableBufferPointer { dy in
                try context.check(kf_activation_backward(
                    context.handle, core, dy.count, y.baseAddress, dy.baseAddress, dy.baseAddress))
            }
        }
    }

    func derivativeTimes(_ gradient: Tensor, output: Tensor, context: KernelContext) throws -> Tensor {
        if self == .identity { return gradient }
        let scalars = try output.withUnsafeBufferPointer { y in
            try gradient.withUnsafeBufferPointer { dy in
                try [Float](unsafeUninitializedCapacity: dy.count) { dx, initialized in
                    try context.check(kf_activation_backward(
                        context.handle, core, dy.count, y.baseAddress, dy.baseAddress, dx.baseAddress))
                    initialized = dy.count
                }
            }
        }
        return Tensor(uncheckedShape: gradient.shape, scalars: scalars)
    }
}

/// sigma(x) without overflow for large |x|.
@inline(__always)
func stableSigmoid(_ x: Float) -> Float {
    if x >= 0 {
        return 1 / (1 + Foundation.exp(-x))
    }
    let e = Foundation.exp(x)
    return e / (1 + e)
}

/// Shared machinery of the activation layers.
struct ActivationState {
    let kind: ActivationKind
    var lastOutput: Tensor?
    private var contextStorage: KernelContext?

    init(kind: ActivationKind) { self.kind = kind }

    private mutating func context() throws -> KernelContext {
        if let contextStorage { return contextStorage }
        let created = try KernelContext()
        contextStorage = created
        return created
    }

    mutating func forward(_ input: Tensor, name: String) throws -> Tensor {
        try checkInput(input, name: name)
        let output = try kind.apply(input, context: context())
        lastOutput = output
        return output
    }

    /// The forward pass in the input's storage: a model hands over a batch nobody else holds
    /// (a dense layer's fresh output), which saves an allocation and a pass over new memory.
    mutating func forward(inPlace tensor: inout Tensor, name: String) throws {
        try checkInput(tensor, name: name)
        lastOutput = nil  // not a second owner of storage that may be reused below
        try kind.apply(inPlace: &tensor, context: context())
        lastOutput = tensor
    }

    private func checkInput(_ input: Tensor, name: String) throws {
        guard input.rank >= 1, input.rowCount > 0, input.scalarCount > 0 else {
            throw KronfacError(.shape, "\(name) input is an empty batch (shape \(input.shape))")
        }
    }

    mutating func backward(_ gradient: Tensor, name: String) throws -> Tensor {
        let output = try checkGradient(gradient, name: name)
        return try kind.derivativeTimes(gradient, output: output, context: context())
    }

    /// The backward pass in the gradient's storage (see `forward(inPlace:name:)`).
    mutating func backward(inPlace gradient: inout Tensor, name: String) throws {
        let output = try checkGradient(gradient, name: name)
        try kind.derivativeTimes(inPlace: &gradient, output: output, context: context())
    }

    /// The last output, which the gradient must match in shape.
    private func checkGradient(_ gradient: Tensor, name: String) throws -> Tensor {
        guard let lastOutput else {
            throw KronfacError(.state, "\(name).backward called before forward")
        }
        guard gradient.shape == lastOutput.shape else {
            throw KronfacError(.shape,
                "\(name) output gradient has shape \(gradient.shape), the last forward output had \(lastOutput.shape)")
        }
        return lastOutput
    }
}

/// An activation layer that a model may run in the storage of the batch it hands over.
protocol InPlaceActivation: Layer {
    func forward(inPlace tensor: inout Tensor) throws
    func backward(inPlace gradient: inout Tensor) throws
}

/// The identity activation (a placeholder, e.g. for a linear output layer).
public final class Identity: Layer, InPlaceActivation {
    private var state = ActivationState(kind: .identity)
    public init() {}
    public func forward(_ input: Tensor) throws -> Tensor { try state.forward(input, name: "Identity") }
    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        try state.backward(outputGradient, name: "Identity")
    }
    func forward(inPlace tensor: inout Tensor) throws { try state.forward(inPlace: &tensor, name: "Identity") }
    func backward(inPlace gradient: inout Tensor) throws { try state.backward(inPlace: &gradient, name: "Identity") }
}

/// max(0, x).
public final class ReLU: Layer, InPlaceActivation {
    private var state = ActivationState(kind: .relu)
    public init() {}
    public func forward(_ input: Tensor) throws -> Tensor { try state.forward(input, name: "ReLU") }
    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        try state.backward(outputGradient, name: "ReLU")
    }
    func forward(inPlace tensor: inout Tensor) throws { try state.forward(inPlace: &tensor, name: "ReLU") }
    func backward(inPlace gradient: inout Tensor) throws { try state.backward(inPlace: &gradient, name: "ReLU") }
}

/// The hyperbolic tangent.
public final class Tanh: Layer, InPlaceActivation {
    private var state = ActivationState(kind: .tanh)
    public init() {}
    public func forward(_ input: Tensor) throws -> Tensor { try state.forward(input, name: "Tanh") }
    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        try state.backward(outputGradient, name: "Tanh")
    }
    func forward(inPlace tensor: inout Tensor) throws { try state.forward(inPlace: &tensor, name: "Tanh") }
    func backward(inPlace gradient: inout Tensor) throws { try state.backward(inPlace: &gradient, name: "Tanh") }
}

/// The logistic function 1 / (1 + e^-x).
public final class Sigmoid: Layer, InPlaceActivation {
    private var state = ActivationState(kind: .sigmoid)
    public init() {}
    public func forward(_ input: Tensor) throws -> Tensor { try state.forward(input, name: "Sigmoid") }
    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        try state.backward(outputGradient, name: "Sigmoid")
    }
    func forward(inPlace tensor: inout Tensor) throws { try state.forward(inPlace: &tensor, name: "Sigmoid") }
    func backward(inPlace gradient: inout Tensor) throws { try state.backward(inPlace: &gradient, name: "Sigmoid") }
}

// MARK: - Sequential

/// Layers applied one after another.
public final class Sequential: Layer, InputGradientSkipping {
    /// The layers in order.
    public let layers: [any Layer]

    /// A model of `layers`; with a seed, every dense layer (nested ones included) is
    /// re-initialised from it, layer i with a stream of its own.
    public init(_ layers: [any Layer], seed: UInt64? = nil) {
        self.layers = layers
        if let seed { initialize(seed: seed) }
    }

    /// A model of the given layers; see `init(_:seed:)`.
    public convenience init(seed: UInt64? = nil, _ layers: any Layer...) {
        self.init(layers, seed: seed)
    }

    /// Re-initialises every layer with parameters (dense and convolution layers) from `seed`.
    public func initialize(seed: UInt64) {
        for (index, layer) in linearMaps.enumerated() {
            var generator = SeededGenerator(seed: seed, stream: 0x5365_7175, index: UInt64(index))
            layer.initialize(seed: generator.next())
        }
    }

    /// The dense layers, depth first in order (a convolution's are not among them).
    public var denseLayers: [Dense] { leaves.compactMap { $0 as? Dense } }

    /// The layers of nested models in order, flattened.
    var leaves: [any Layer] {
        layers.flatMap { layer -> [any Layer] in
            if let nested = layer as? Sequential { return nested.leaves }
            return [layer]
        }
    }

    /// The linear maps the optimizers update, depth first in order: dense layers and the weight
    /// matrices of convolutions.
    var linearMaps: [Dense] {
        leaves.compactMap { layer -> Dense? in
            if let dense = layer as? Dense { return dense }
            if let conv = layer as? Conv2D { return conv.linear }
            return nil
        }
    }

    /// The number of trainable scalars.
    public var parameterCount: Int { linearMaps.reduce(0) { $0 + $1.parameterCount } }

    /// How each of `linearMaps` is factored along its shared axis: the mode and the loss terms per
    /// example R' (0 = automatic, as kf_layer_params), from each layer's `sharedAxis` and the
    /// layers after it (see `SharedAxisApproximation.automatic`).
    var sharedAxisSettings: [(reduce: Bool, lossTermsPerExample: Int)] {
        let all = leaves
        var settings: [(reduce: Bool, lossTermsPerExample: Int)] = []
        for (index, layer) in all.enumerated() {
            let map: Dense
            if let dense = layer as? Dense { map = dense } else if let conv = layer as? Conv2D { map = conv.linear } else { continue }
            // What happens to the axis downstream: pooled away, flattened, or it reaches the loss.
            var pooled = false, flattened = false
            for later in all[(index + 1)...] {
                if later is GlobalAveragePool || later is SharedAxisPool { pooled = true; break }
                if later is Flatten || later is Reshape { flattened = true; break }
            }
            let approximation = map.sharedAxis
            let reduce = approximation == .reduce || (approximation == .automatic && pooled)
            settings.append((reduce, reduce ? 0 : (pooled || flattened ? 1 : 0)))
        }
        return settings
    }

    public func forward(_ input: Tensor) throws -> Tensor {
        guard !layers.isEmpty else { return input }
        var x = input
        for layer in layers {
            // Activations work in place: the batch a layer returns is the model's alone (shared
            // storage, such as the caller's input, is copied first).
            if let activation = layer as? any InPlaceActivation {
                try activation.forward(inPlace: &x)
            } else {
                x = try layer.forward(x)
            }
        }
        return x
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        try backward(outputGradient, pass: pass, needsInputGradient: true)!
    }

    /// The backward pass; without `needsInputGradient` the first dense layer skips its input gradient.
    func backward(_ outputGradient: Tensor, pass: BackwardPass, needsInputGradient: Bool) throws -> Tensor? {
        var g = outputGradient
        for (index, layer) in layers.enumerated().reversed() {
            let needed = needsInputGradient || index > 0
            if let activation = layer as? any InPlaceActivation {
                try activation.backward(inPlace: &g)
            } else if let skipping = layer as? any InputGradientSkipping {
                guard let next = try skipping.backward(g, pass: pass, needsInputGradient: needed) else { return nil }
                g = next
            } else {
                g = try layer.backward(g, pass: pass)
            }
        }
        return g
    }
}
