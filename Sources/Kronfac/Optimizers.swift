internal import CKronfac

/// Owns a `kf_optimizer` and frees it with the last reference.
final class OptimizerHandle {
    let raw: OpaquePointer

    init(parameters: kf_optimizer_params) throws {
        var p = parameters
        var created: OpaquePointer?
        let status = kf_optimizer_create(&p, nil, &created)
        guard status == KF_OK, let created else {
            throw KronfacError(status: status, message: "kf_optimizer_create rejected the parameters")
        }
        raw = created
    }

    init(checkpoint bytes: [UInt8]) throws {
        var created: OpaquePointer?
        let status = bytes.withUnsafeBytes { buffer in
            kf_optimizer_create_from_checkpoint(buffer.baseAddress, buffer.count, nil, &created)
        }
        guard status == KF_OK, let created else {
            throw KronfacError(status: status, message: "the optimizer state in the checkpoint is invalid")
        }
        raw = created
    }

    deinit { kf_optimizer_destroy(raw) }

    func check(_ status: kf_status) throws {
        guard status == KF_OK else {
            throw KronfacError(status: status, message: String(cString: kf_optimizer_last_error(raw)))
        }
    }
}

/// An optimizer: updates the dense and convolution layers of a `Sequential` model in place from the
/// gradients of its last backward pass, through the C core's `kf_optimizer`.
///
/// Create one of `SGD`, `Adam`, `FOOF`, `KFAC`, `EKFAC`. The first `update(_:)` binds the
/// optimizer to the model's layers with parameters (depth first, in order); it then only accepts
/// that model. Layers applied along a shared axis (convolutions, `Dense` on `[n, R, d]` inputs)
/// are registered with the R of the first pass and their `sharedAxis` approximation.
/// Hyperparameters are validated when the optimizer is created.
///
/// For your own training loop, per mini-batch:
/// 1. `let statistics = try optimizer.needsStatistics` (before the passes),
/// 2. `model.forward`, the loss gradient, `model.backward(g)`,
/// 3. if `optimizer.needsCurvaturePass(statistics)`: `model.backward(v, pass: .curvature)` with
///    `v = loss.sampledCurvatureVectors(output, using: &generator)`,
/// 4. `try optimizer.update(model)`.
/// `Trainer` does all of this.
public class Optimizer {
    let handle: OptimizerHandle
    /// The curvature vectors of K-FAC and EKFAC; nil for optimizers that need no output gradients.
    let fisher: FisherType?
    private var bound: [ObjectIdentifier] = []
    /// Takes the step in place of the core's batch step, after the observations: the data-parallel
    /// step of `distribute(mode:)` (Distributed.swift, MPI builds). Gets the layers and the batch's
    /// example count.
    var stepOverride: (([Dense], Int) throws -> Void)?
    private var boundShapes: [(out: Int, in: Int, bias: Bool, positions: Int)] = []

    init(parameters: kf_optimizer_params, fisher: FisherType?) throws {
        try Optimizer.validate(parameters)
        handle = try OptimizerHandle(parameters: parameters)
        self.fisher = fisher
    }

    /// Checks the documented ranges in Swift so that the error names the parameter (a failed
    /// kf_optimizer_create has no handle to hold a message).
    static func validate(_ p: kf_optimizer_params) throws {
        func fail(_ name: String, _ value: Float, _ range: String) -> KronfacError {
            KronfacError(.invalidArgument, "\(name) = \(value) is out of range; it must be \(range)")
        }
        func unit(_ x: Float) -> Bool { x.isFinite && x >= 0 && x < 1 }
        guard p.learning_rate.isFinite, p.learning_rate > 0 else { throw fail("learningRate", p.learning_rate, "> 0") }
        guard unit(p.momentum) else { throw fail("momentum", p.momentum, "in [0, 1)") }
        guard p.weight_decay.isFinite, p.weight_decay >= 0 else { throw fail("weightDecay", p.weight_decay, ">= 0") }
        let algorithm = p.algorithm
        if algorithm == KF_ALGO_FOOF {
            guard p.damping.isFinite, p.damping >= 0 else { throw fail("damping", p.damping, ">= 0") }
        } else if algorithm == KF_ALGO_KFAC || algorithm == KF_ALGO_KFAC_EXACT_DAMPING || algorithm == KF_ALGO_EKFAC {
            guard p.damping.isFinite, p.damping > 0 else { throw fail("damping", p.damping, "> 0") }
        }
        guard unit(p.factor_decay) else { throw fail("factorDecay", p.factor_decay, "in [0, 1)") }
        guard p.kl_clip.isFinite, p.kl_clip >= 0 else { throw fail("klClip", p.kl_clip, ">= 0 (0 = off)") }
        guard unit(p.adam_beta1) else { throw fail("beta1", p.adam_beta1, "in [0, 1)") }
        guard unit(p.adam_beta2) else { throw fail("beta2", p.adam_beta2, "in [0, 1)") }
        guard p.adam_epsilon.isFinite, p.adam_epsilon > 0 else { throw fail("epsilon", p.adam_epsilon, "> 0") }
    }

    static func intervals(_ statistics: Int, _ inverse: Int) throws -> (UInt32, UInt32) {
        guard statistics >= 1, statistics <= Int(UInt32.max) else {
            throw KronfacError(.invalidArgument, "statisticsInterval = \(statistics) must be >= 1")
        }
        guard inverse >= 1, inverse <= Int(UInt32.max) else {
            throw KronfacError(.invalidArgument, "inverseInterval = \(inverse) must be >= 1")
        }
        return (UInt32(statistics), UInt32(inverse))
    }

    static func subsample(_ count: Int) throws -> UInt32 {
        guard count >= 0, count <= Int(UInt32.max) else {
            throw KronfacError(.invalidArgument, "statisticsSubsample = \(count) must be >= 0 (0 = off)")
        }
        return UInt32(count)
    }

    /// The parameters the second-order optimizers (FOOF, K-FAC, EKFAC) share, checked.
    static func secondOrder(
        _ algorithm: kf_algorithm, learningRate: Float, damping: Float, momentum: Float,
        weightDecay: Float, factorDecay: Float, statisticsInterval: Int, inverseInterval: Int,
        klClip: Float, statisticsSubsample: Int
    ) throws -> kf_optimizer_params {
        var p = Optimizer.defaults(algorithm)
        (p.stats_interval, p.inverse_interval) = try Optimizer.intervals(statisticsInterval, inverseInterval)
        p.stats_subsample = try Optimizer.subsample(statisticsSubsample)
        p.learning_rate = learningRate
        p.damping = damping
        p.momentum = momentum
        p.weight_decay = weightDecay
        p.factor_decay = factorDecay
        p.kl_clip = klClip
        return p
    }

    static func defaults(_ algorithm: kf_algorithm) -> kf_optimizer_params {
        var p = kf_optimizer_params()
        _ = kf_optimizer_params_init(&p, algorithm)
        return p
    }

    private var parameters: kf_optimizer_params {
        var p = kf_optimizer_params()
        _ = kf_optimizer_get_params(handle.raw, &p)
        return p
    }

    /// The learning rate in force.
    public var learningRate: Float { parameters.learning_rate }
    /// The damping in force (0 for optimizers without one).
    public var damping: Float { parameters.damping }

    /// Changes the learning rate between steps (for schedules).
    public func setLearningRate(_ value: Float) throws {
        guard value.isFinite, value > 0 else {
            throw KronfacError(.invalidArgument, "learningRate = \(value) is out of range; it must be > 0")
        }
        try handle.check(kf_optimizer_set_learning_rate(handle.raw, value))
    }

    /// Changes the damping between steps; the inverses are refreshed on the next step.
    public func setDamping(_ value: Float) throws {
        try handle.check(kf_optimizer_set_damping(handle.raw, value))
    }

    /// The number of steps taken.
    public var stepCount: Int {
        var steps: UInt64 = 0
        _ = kf_optimizer_step_count(handle.raw, &steps)
        return Int(steps)
    }

    /// Bytes held by the C optimizer (factors, inverses, momentum, workspace).
    public var memoryBytes: Int {
        var bytes = 0
        _ = kf_optimizer_memory_bytes(handle.raw, &bytes)
        return bytes
    }

    /// Whether the next step collects curvature statistics (activations, and for K-FAC and EKFAC
    /// the curvature pass). Ask before the forward pass of the step.
    public var needsStatistics: Bool {
        get throws {
            var needed: Int32 = 0
            try handle.check(kf_optimizer_needs_statistics(handle.raw, &needed))
            return needed != 0
        }
    }

    /// Whether a step with these statistics needs the sampled-target curvature backward pass.
    public func needsCurvaturePass(_ statistics: Bool) -> Bool {
        statistics && fisher == .sampled
    }

    /// How many times a layer's inverses (or eigenbases) were recomputed.
    func inverseCount(layer: Int) throws -> Int {
        var count: UInt64 = 0
        try handle.check(kf_optimizer_inverse_count(handle.raw, layer, &count))
        return Int(count)
    }

    /// A layer's moving-average factor: `A` (`activations`, dimension in + bias) or `G`.
    func factor(layer: Int, activations: Bool) throws -> Tensor {
        guard layer >= 0, layer < boundShapes.count else {
            throw KronfacError(.invalidArgument, "layer \(layer) is not registered")
        }
        let shape = boundShapes[layer]
        let dimension = activations ? shape.in + (shape.bias ? 1 : 0) : shape.out
        var values = [Float](repeating: 0, count: dimension * dimension)
        try values.withUnsafeMutableBufferPointer { buffer in
            try handle.check(kf_optimizer_layer_factor(
                handle.raw, layer, activations ? KF_FACTOR_A : KF_FACTOR_G, buffer.baseAddress, dimension))
        }
        return Tensor(uncheckedShape: [dimension, dimension], scalars: values)
    }

    /// Registers the model's layers with parameters on first use (after a forward pass, which
    /// tells the shared axes' lengths); afterwards checks it is the same model.
    /// `positions` gives the shared axes' lengths when no forward pass has told them (a restore).
    func bind(_ model: Sequential, positions: [Int]? = nil) throws {
        let layers = model.linearMaps
        let identities = layers.map(ObjectIdentifier.init)
        if !bound.isEmpty || stepCount > 0 {
            guard identities == bound else {
                throw KronfacError(.state,
                    "this optimizer is bound to another model (\(bound.count) layers with parameters); create one per model")
            }
            return
        }
        guard !layers.isEmpty else { throw KronfacError(.shape, "the model has no dense or convolution layers to optimize") }
        guard Set(identities).count == identities.count else {
            throw KronfacError(.invalidArgument,
                "a layer appears more than once in the model; shared layers are not supported")
        }
        let settings = model.sharedAxisSettings
        let lengths = positions ?? layers.map(\.positions)
        for (index, (layer, setting)) in zip(layers, settings).enumerated() {
            var lp = kf_layer_params()
            try handle.check(kf_layer_params_init(&lp, layer.outputSize, layer.inputSize))
            lp.bias = layer.hasBias ? 1 : 0
            lp.shared = lengths[index]
            lp.shared_mode = setting.reduce ? KF_SHARED_REDUCE : KF_SHARED_EXPAND
            lp.loss_terms_per_example = setting.lossTermsPerExample
            var index = 0
            try handle.check(kf_optimizer_add_layer(handle.raw, &lp, &index))
        }
        bound = identities
        boundShapes = zip(layers, lengths).map { ($0.outputSize, $0.inputSize, $0.hasBias, $1) }
    }

    /// The registration of layer `index` as the core resolved it.
    func layerParameters(_ index: Int) throws -> (positions: Int, reduce: Bool, lossTermsPerExample: Int) {
        var lp = kf_layer_params()
        try handle.check(kf_optimizer_layer_params(handle.raw, index, &lp))
        return (lp.shared, lp.shared_mode == KF_SHARED_REDUCE, lp.loss_terms_per_example)
    }

    /// One step: hands the statistics of the last passes to the core (on statistics steps) and
    /// updates the parameters of every dense and convolution layer in place from its gradients.
    ///
    /// - Throws: `.state` when a layer's backward pass (or, on a statistics step, the curvature
    ///   pass K-FAC needs) is missing or was already used; `.nonFinite` for NaN or infinity in
    ///   gradients or parameters; a numerical error when an inverse cannot be refreshed. A failed
    ///   update changes neither the parameters nor the optimizer.
    public func update(_ model: Sequential) throws {
        try bind(model)
        let layers = model.linearMaps
        let statistics = try needsStatistics
        for (index, layer) in layers.enumerated() {
            guard layer.forwardCount > 0, layer.lastInput != nil else {
                throw KronfacError(.state, "layer \(index) has no forward pass to learn from")
            }
            guard layer.positions == boundShapes[index].positions else {
                throw KronfacError(.shape,
                    "layer \(index) was registered with \(boundShapes[index].positions) positions along its shared axis; "
                        + "its last pass had \(layer.positions)")
            }
            guard layer.forwardCount != layer.updatedForward else {
                throw KronfacError(.state,
                    "layer \(index): the gradients of the last forward pass were already used by a step")
            }
            guard layer.outputGradientForward == layer.forwardCount else {
                throw KronfacError(.state, "layer \(index) has no backward pass for its last forward pass")
            }
            if needsCurvaturePass(statistics) && layer.curvatureGradientForward != layer.forwardCount {
                throw KronfacError(.state,
                    "layer \(index): this statistics step needs the curvature backward pass "
                        + "(backward(v, pass: .curvature) with sampled-target vectors)")
            }
        }
        // One batch size for the whole step (checked before anything is handed to the core).
        let rows = layers[0].gradientExamples
        for (index, layer) in layers.enumerated() where layer.gradientExamples != rows {
            throw KronfacError(.shape, "layer \(index) saw another batch size than layer 0 in its last pass")
        }
        if statistics {
            for (index, layer) in layers.enumerated() {
                let input = layer.lastInput!
                try input.withUnsafeBufferPointer { x in
                    try handle.check(kf_optimizer_observe_activations(
                        handle.raw, index, layer.lastExamples, x.baseAddress, layer.inputSize))
                }
                guard let fisher else { continue }
                let g = fisher == .sampled ? layer.lastCurvatureGradient! : layer.lastOutputGradient!
                try g.withUnsafeBufferPointer { gp in
                    try handle.check(kf_optimizer_observe_gradients(
                        handle.raw, index, layer.lastExamples, gp.baseAddress, layer.outputSize, 1))
                }
            }
        }
        // The batch form of the step: the gradient is exactly gs^T [x 1], so FOOF and K-FAC can
        // skip forming it (DESIGN.md section 8), and the backward pass need not form it either.
        if let stepOverride {
            try stepOverride(layers, rows)
        } else {
            var batches: [kf_layer_batch] = []
            batches.reserveCapacity(layers.count)
            try Optimizer.withLayerBatches(layers[...], &batches) { all in
                try handle.check(kf_optimizer_step_batch(handle.raw, rows, all, all.count))
            }
        }
        for layer in layers { layer.updatedForward = layer.forwardCount }
    }

    /// Collects every layer's pointers (each valid only inside its closure) before calling body.
    private static func withLayerBatches(
        _ layers: ArraySlice<Dense>, _ batches: inout [kf_layer_batch],
        _ body: ([kf_layer_batch]) throws -> Void
    ) throws {
        guard let layer = layers.first else { return try body(batches) }
        try layer.withStepBatch { w, b, x, gs, _ in
            batches.append(kf_layer_batch(
                weight: w, ld_weight: layer.inputSize, bias: b,
                x: x, ldx: layer.inputSize, gs: gs, ldgs: layer.outputSize))
            try withLayerBatches(layers.dropFirst(), &batches, body)
        }
    }

    // MARK: Checkpoints

    /// The core's checkpoint of the optimizer state.
    func checkpoint() throws -> [UInt8] {
        var size = 0
        try handle.check(kf_optimizer_checkpoint_size(handle.raw, &size))
        var bytes = [UInt8](repeating: 0, count: size)
        var written = 0
        try bytes.withUnsafeMutableBytes { buffer in
            try handle.check(kf_optimizer_save(handle.raw, buffer.baseAddress, buffer.count, &written))
        }
        return Array(bytes.prefix(written))
    }

    /// Restores the state of a checkpoint taken from an optimizer of the same kind on the same
    /// model shapes; binds to `model` first if needed. Unchanged on error.
    func restore(_ bytes: [UInt8], model: Sequential) throws {
        if bound.isEmpty && stepCount == 0 {
            // The shared axes' lengths are the checkpoint's (no forward pass has told them yet);
            // everything else must match the model, which kf_optimizer_restore checks.
            let saved = try OptimizerHandle(checkpoint: bytes)
            var count = 0
            try saved.check(kf_optimizer_layer_count(saved.raw, &count))
            guard count == model.linearMaps.count else {
                throw KronfacError(.format,
                    "the checkpoint's optimizer holds \(count) layers, the model has \(model.linearMaps.count)")
            }
            let positions = try (0..<count).map { index -> Int in
                var lp = kf_layer_params()
                try saved.check(kf_optimizer_layer_params(saved.raw, index, &lp))
                return lp.shared
            }
            try bind(model, positions: positions)
        }
        try bytes.withUnsafeBytes { buffer in
            try handle.check(kf_optimizer_restore(handle.raw, buffer.baseAddress, buffer.count))
        }
    }

    /// The algorithm name of the core ("sgd", "foof", ...).
    var algorithmName: String {
        guard let name = kf_algorithm_name(parameters.algorithm) else { return "unknown" }
        return String(cString: name)
    }
}

/// Heavy-ball SGD: `v <- momentum v + grad`, `W <- W - lr (v + weightDecay W)`.
///
/// The defaults of all optimizers are the C core's (`kf_optimizer_params_init`), chosen for
/// batch-mean losses whose per-example term is a negative log-likelihood summed over the outputs
/// (softmax cross-entropy, `SigmoidCrossEntropy()`); see README.md.
public final class SGD: Optimizer {
    public init(learningRate: Float = 0.03, momentum: Float = 0.9, weightDecay: Float = 0) throws {
        var p = Optimizer.defaults(KF_ALGO_SGD)
        p.learning_rate = learningRate
        p.momentum = momentum
        p.weight_decay = weightDecay
        try super.init(parameters: p, fisher: nil)
    }
}

/// Adam with decoupled weight decay (AdamW).
public final class Adam: Optimizer {
    public init(
        learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
        weightDecay: Float = 0
    ) throws {
        var p = Optimizer.defaults(KF_ALGO_ADAM)
        p.learning_rate = learningRate
        p.adam_beta1 = beta1
        p.adam_beta2 = beta2
        p.adam_epsilon = epsilon
        p.weight_decay = weightDecay
        try super.init(parameters: p, fisher: nil)
    }
}

/// FOOF (Benzing 2022): the gradient times `(A + damping I)^-1`, with `A` the moving average of
/// the layer inputs' second moment. Needs only the forward pass's activations.
/// Defaults: learning rate 0.3, damping 0.3, no momentum, inverses every 20 steps.
/// With `statisticsSubsample` S in 1..<inverseInterval, statistics are taken only on step 0 and
/// the S steps before each refresh (Benzing 2022, section 4.1); `kronfac train` uses T = 100, S = 10.
public final class FOOF: Optimizer {
    public init(
        learningRate: Float = 0.3, damping: Float = 0.3, momentum: Float = 0, weightDecay: Float = 0,
        factorDecay: Float = 0.95, statisticsInterval: Int = 1, inverseInterval: Int = 20, klClip: Float = 0,
        statisticsSubsample: Int = 0
    ) throws {
        try super.init(
            parameters: Optimizer.secondOrder(
                KF_ALGO_FOOF, learningRate: learningRate, damping: damping, momentum: momentum,
                weightDecay: weightDecay, factorDecay: factorDecay,
                statisticsInterval: statisticsInterval, inverseInterval: inverseInterval,
                klClip: klClip, statisticsSubsample: statisticsSubsample),
            fisher: nil)
    }
}

/// K-FAC (Martens & Grosse 2015): `(G + (gamma/pi) I)^-1 grad (A + pi gamma I)^-1` with
/// `gamma = sqrt(damping)`; or, with `exactDamping`, `(A (x) G + damping I)^-1 grad` through
/// eigendecompositions. `G` comes from the curvature pass (`fisher`, one sampled target per
/// example by default). Defaults: learning rate 0.1, damping 0.1, no momentum, inverses every 20 steps;
/// `statisticsSubsample` as for `FOOF` (it also skips the curvature pass on the other steps).
public final class KFAC: Optimizer {
    public init(
        learningRate: Float = 0.1, damping: Float = 0.1, momentum: Float = 0, weightDecay: Float = 0,
        factorDecay: Float = 0.95, statisticsInterval: Int = 1, inverseInterval: Int = 20, klClip: Float = 0,
        fisher: FisherType = .sampled, exactDamping: Bool = false, statisticsSubsample: Int = 0
    ) throws {
        try super.init(
            parameters: Optimizer.secondOrder(
                exactDamping ? KF_ALGO_KFAC_EXACT_DAMPING : KF_ALGO_KFAC, learningRate: learningRate, damping: damping, momentum: momentum,
                weightDecay: weightDecay, factorDecay: factorDecay,
                statisticsInterval: statisticsInterval, inverseInterval: inverseInterval,
                klClip: klClip, statisticsSubsample: statisticsSubsample),
            fisher: fisher)
    }
}

/// EKFAC (George et al. 2018): K-FAC's eigenbasis with a re-estimated diagonal scaling.
public final class EKFAC: Optimizer {
    public init(
        learningRate: Float = 0.1, damping: Float = 0.1, momentum: Float = 0, weightDecay: Float = 0,
        factorDecay: Float = 0.95, statisticsInterval: Int = 1, inverseInterval: Int = 20, klClip: Float = 0,
        fisher: FisherType = .sampled, statisticsSubsample: Int = 0
    ) throws {
        try super.init(
            parameters: Optimizer.secondOrder(
                KF_ALGO_EKFAC, learningRate: learningRate, damping: damping, momentum: momentum,
                weightDecay: weightDecay, factorDecay: factorDecay,
                statisticsInterval: statisticsInterval, inverseInterval: inverseInterval,
                klClip: klClip, statisticsSubsample: statisticsSubsample),
            fisher: fisher)
    }
}
