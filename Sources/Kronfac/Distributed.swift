// Data-parallel training over MPI: the package trait MPI (`swift build --traits MPI`) builds this
// file; without it the package has no MPI code.
#if KRONFAC_MPI
internal import CKronfac
internal import CKronfacDist

/// The processes of an MPI job (`mpirun -np P ...`), all running the same program.
public struct MPIProcesses: Sendable {
    /// This process's rank, 0..<count.
    public let rank: Int
    /// The number of processes.
    public let count: Int
    /// Whether this is rank 0, the process that reports and writes files.
    public var isRoot: Bool { rank == 0 }

    /// Initialises MPI (once per process) and returns the job's processes.
    ///
    /// - Throws: `.state` when MPI cannot be initialised.
    public static func start() throws -> MPIProcesses {
        var rank: Int32 = 0, size: Int32 = 1
        let code = kfs_mpi_start(&rank, &size)
        guard code == 0 else { throw KronfacError(.state, "MPI_Init failed (MPI error \(code))") }
        return MPIProcesses(rank: Int(rank), count: Int(size))
    }

    /// Finalises MPI. Call it once, on every process, after the last distributed optimizer is gone.
    public static func finish() { kfs_mpi_finish() }

    /// Ends every process of the job at once (MPI_Abort), with `status`.
    public static func abort(status: Int32) -> Never {
        kfs_mpi_abort(status)
        fatalError("MPI_Abort returned")
    }

    /// Whether `condition` holds on every process (collective: every process must call it).
    public static func everywhere(_ condition: Bool) -> Bool {
        kfs_mpi_min_int(condition ? 1 : 0) == 1
    }
}

/// What the processes exchange after the factorisations (kronfac_dist.h, `kf_dist_mode`).
public enum DistributionMode: Sendable {
    /// Every process preconditions every layer; owners send new inverses on refresh steps.
    case inverses
    /// Each layer's owner alone holds its inverses and preconditions it; the directions are
    /// exchanged every step (not for EKFAC).
    case directions
}

/// Owns a `kf_dist` handle (created on the first step, once the optimizer knows its layers).
final class DistributionHandle {
    let optimizer: OptimizerHandle
    let mode: DistributionMode
    var raw: OpaquePointer?

    init(optimizer: OptimizerHandle, mode: DistributionMode) {
        self.optimizer = optimizer
        self.mode = mode
    }

    deinit { if let raw { kfs_dist_destroy(raw) } }

    /// One `kf_dist_step` with the layers' formed gradients of the mean loss over this process's
    /// `examples` examples.
    func step(_ layers: [Dense], examples: Int) throws {
        if raw == nil {
            var created: OpaquePointer?
            let status = kfs_dist_create_world(optimizer.raw, mode == .directions ? 1 : 0, &created)
            guard status == KF_OK, let created else {
                throw KronfacError(status: status, message: String(cString: kf_optimizer_last_error(optimizer.raw)))
            }
            raw = created
        }
        var tensors: [kf_layer_tensors] = []
        tensors.reserveCapacity(layers.count)
        let gradients = layers.map { ($0.weightGradient, $0.biasGradient) }
        try withLayerTensors(layers[...], gradients[...], &tensors) { all in
            let status = kfs_dist_step(raw, all, all.count, examples)
            guard status == KF_OK else {
                throw KronfacError(status: status, message: String(cString: kfs_dist_last_error(raw)))
            }
        }
    }

    /// Collects every layer's pointers (each valid only inside its closure) before calling body.
    private func withLayerTensors(
        _ layers: ArraySlice<Dense>, _ gradients: ArraySlice<(Tensor, Tensor?)>,
        _ tensors: inout [kf_layer_tensors], _ body: ([kf_layer_tensors]) throws -> Void
    ) throws {
        guard let layer = layers.first, let (gw, gb) = gradients.first else { return try body(tensors) }
        try layer.withStepBatch { w, b, _, _, _ in
            try gw.withUnsafeBufferPointer { gwp in
                try (gb ?? gw).withUnsafeBufferPointer { gbp in
                    tensors.append(kf_layer_tensors(
                        weight: w, ld_weight: layer.inputSize, bias: b,
                        grad_weight: gwp.baseAddress, ld_grad_weight: layer.inputSize,
                        grad_bias: gb == nil ? nil : gbp.baseAddress))
                    try withLayerTensors(layers.dropFirst(), gradients.dropFirst(), &tensors, body)
                }
            }
        }
    }
}

extension Optimizer {
    /// Makes every later `update(_:)` one data-parallel step over all processes of the MPI job
    /// (kronfac_dist): each process gives the gradients and statistics of its own part of the
    /// batch (`Trainer.setBatchShare(rank:ranks:)`), and every process takes the step one process
    /// would take on the whole batch, so the models stay identical. Every process must create the
    /// same model and optimizer and call this, then step together. K-FAC's and EKFAC's sampled
    /// curvature targets are drawn per process, so they are other (equally distributed) draws than
    /// one process would make. Call before the first update.
    ///
    /// - Throws: `.state` after the first update or a second call.
    public func distribute(mode: DistributionMode = .inverses) throws {
        guard stepCount == 0, stepOverride == nil else {
            throw KronfacError(.state, "distribute(mode:) must come before the first update, once")
        }
        let distribution = DistributionHandle(optimizer: handle, mode: mode)
        stepOverride = { layers, examples in try distribution.step(layers, examples: examples) }
    }
}
#endif
