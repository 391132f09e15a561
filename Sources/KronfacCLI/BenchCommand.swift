import ArgumentParser
import Foundation
import Kronfac
internal import CKronfac
internal import COpenBLAS

/// `kronfac bench`: what the kernels and one training step cost, as ratios to references measured
/// in the same run (raw OpenBLAS sgemm, the SGD step).
public struct BenchCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Kernel throughput against OpenBLAS sgemm, and each optimizer's step as a ratio to SGD's.",
        discussion: """
            (a) kf_gemm and kf_syrk at the model's shapes (the forward, backward and weight-gradient \
            products and the activation factor) against cblas_sgemm on the same shapes, in GFLOP/s \
            (kf_syrk is credited with the flops of the full product it replaces).
            (b) The forward and backward passes through the Swift layer (products, activations, loss \
            gradient) at the counted flops of their products, against cblas_sgemm on the same products.
            (c) One whole training step through the Swift layer (forward, backward, curvature pass \
            when needed, update) per algorithm, with inverses every step (T=1) and as the command \
            line trains (T=100 from statistics of the 10 steps before each refresh), as a ratio to \
            the SGD step, and the optimizer's memory per layer.
            (d) K-FAC-expand against K-FAC-reduce: the time of one statistics step (both factors) \
            of a 3x3 convolution and of a sequence layer, and the memory the factors read and add.
            Medians over the repeats, with the smallest and largest in brackets.
            """)

    @Option(name: .long, help: ArgumentHelp(
        "Layer widths (default: both 784-1000-1000-1000-10 at batch 100 and 784-1000-500-250-30-250-500-1000-784 at batch 500).",
        valueName: "widths"))
    public var widths: String?

    @Option(name: .long, help: ArgumentHelp("Examples per batch (default: 100, or per default model as above).", valueName: "n"))
    public var batch: Int?

    @Option(name: .long, help: ArgumentHelp("Repeats of every measurement.", valueName: "n"))
    public var repeats: Int = 3

    @Option(name: .long, help: ArgumentHelp("OpenBLAS threads (default: OpenBLAS's choice, one per core).", valueName: "n"))
    public var threads: Int?

    public init() {}

    public func validate() throws {
        if let batch, batch < 1 || batch > 100_000 { throw ValidationError("--batch must be in 1...100000, got \(batch)") }
        guard repeats >= 1 && repeats <= 1000 else { throw ValidationError("--repeats must be in 1...1000, got \(repeats)") }
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be in 1...1024, got \(threads)") }
        if let widths {
            let parsed: [Int]
            do { parsed = try Widths.parse(widths) } catch let error as CLIError { throw ValidationError(error.message) }
            let parameters = zip(parsed, parsed.dropFirst()).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            guard parameters <= Double(TrainCommand.maximumParameters) else {
                throw ValidationError("--widths \(widths) has \(Int(parameters)) weights; at most \(TrainCommand.maximumParameters)")
            }
        }
    }

    public func run() throws {
        if let threads { try BLASInfo.setThreads(threads) }
        let console = Console()
        console.line("kronfac bench: \(BLASInfo.summary); \(CoreLibrary.buildInfo)")
        if let hint = BLASInfo.slowCoreHint { console.line(hint) }
        let models: [(widths: [Int], batch: Int)]
        if let widths {
            models = [(try Widths.parse(widths), batch ?? 100)]
        } else {
            models = [([784] + Defaults.classifierHidden + [10], batch ?? Defaults.batchSize(.classify)),
                      (Widths.mirrored(Defaults.autoencoderEncoder), batch ?? Defaults.batchSize(.autoencoder))]
        }
        for (widths, batch) in models {
            console.line()
            console.line("model \(Widths.format(widths)), batch \(batch); \(repeats) repeats: median (min-max)")
            let bench = Benchmark(widths: widths, batch: batch, repeats: repeats)
            for line in try bench.kernelTable() { console.line(line) }
            console.line()
            for line in try bench.passTable() { console.line(line) }
            console.line()
            for line in try bench.stepTable() { console.line(line) }
        }
        console.line()
        console.line("shared-axis layers, one statistics step; \(repeats) repeats: median (min-max)")
        for line in try SharedAxisBenchmark(repeats: repeats).table() { console.line(line) }
    }
}

/// Median and range of repeated measurements.
struct Spread {
    var median: Double, low: Double, high: Double

    init(_ values: [Double]) {
        let sorted = values.sorted()
        let n = sorted.count
        median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
        low = sorted.first!
        high = sorted.last!
    }

    /// "85.1 (80.2-88.0)" with `digits` decimals, values scaled by `scale`.
    func format(_ digits: Int, scale: Double = 1) -> String {
        let f = "%.\(digits)f"
        return String(format: f, median * scale) + " (" + String(format: f, low * scale) + "-"
            + String(format: f, high * scale) + ")"
    }
}

/// The measurements of `kronfac bench` for one model.
struct Benchmark {
    let widths: [Int]
    let batch: Int
    let repeats: Int

    var shapes: [(out: Int, in: Int)] {
        (0..<(widths.count - 1)).map { (widths[$0 + 1], widths[$0]) }
    }

    /// Seconds per call of `body`, repeated until at least 50 ms have passed, `repeats` times.
    func time(_ body: () throws -> Void) rethrows -> [Double] {
        try body()  // warm-up: workspaces, page faults
        var samples: [Double] = []
        for _ in 0..<repeats {
            var calls = 0
            let start = Date()
            repeat {
                try body()
                calls += 1
            } while Date().timeIntervalSince(start) < 0.05
            samples.append(Date().timeIntervalSince(start) / Double(calls))
        }
        return samples
    }

    private static func buffer(_ count: Int, seed: Int) -> [Float] {
        (0..<count).map { Float((($0 &* 2_654_435_761 &+ seed) % 1000)) / 1000 - 0.5 }
    }

    /// Table (a): kernel throughput at the model's shapes.
    func kernelTable() throws -> [String] {
        var context: OpaquePointer?
        guard kf_context_create(nil, &context) == KF_OK, let context else {
            throw CLIError("kf_context_create failed")
        }
        defer { kf_context_destroy(context) }
        let n = batch
        // Per layer: X (n x in), W (out x in), G (n x out), outputs.
        let data = shapes.map { shape in
            (x: Self.buffer(n * shape.in, seed: 1), w: Self.buffer(shape.out * shape.in, seed: 2),
             g: Self.buffer(n * shape.out, seed: 3))
        }
        var y = [Float](repeating: 0, count: shapes.map { max(n * max($0.out, $0.in), $0.out * $0.in, $0.in * $0.in) }.max()!)

        enum Product: CaseIterable { case forward, backward, gradient, factor }
        func label(_ p: Product) -> String {
            switch p {
            case .forward: return "forward   Y = X W^T"
            case .backward: return "backward  dX = G W"
            case .gradient: return "gradient  dW = G^T X"
            case .factor: return "factor    A = X^T X (syrk)"
            }
        }
        var lines: [String] = []
        let header = [pad("kernel (all layers)", 28), padLeft("kronfac GFLOP/s", 22), padLeft("sgemm GFLOP/s", 22), padLeft("ratio", 6)]
        lines.append(header.joined(separator: "  "))
        for product in Product.allCases {
            var flops = 0.0
            for s in shapes {
                switch product {
                case .forward, .backward, .gradient: flops += 2 * Double(n * s.out * s.in)
                case .factor: flops += 2 * Double(n * s.in * s.in)
                }
            }
            var status = KF_OK
            let ours = time {
                y.withUnsafeMutableBufferPointer { c in
                    for (s, d) in zip(shapes, data) {
                        d.x.withUnsafeBufferPointer { x in
                            d.w.withUnsafeBufferPointer { w in
                                d.g.withUnsafeBufferPointer { g in
                                    let r: kf_status
                                    switch product {
                                    case .forward:
                                        r = kf_gemm(context, KF_NO_TRANS, KF_TRANS, n, s.out, s.in, 1, x.baseAddress, s.in,
                                                    w.baseAddress, s.in, 0, c.baseAddress, s.out)
                                    case .backward:
                                        r = kf_gemm(context, KF_NO_TRANS, KF_NO_TRANS, n, s.in, s.out, 1, g.baseAddress, s.out,
                                                    w.baseAddress, s.in, 0, c.baseAddress, s.in)
                                    case .gradient:
                                        r = kf_gemm(context, KF_TRANS, KF_NO_TRANS, s.out, s.in, n, 1, g.baseAddress, s.out,
                                                    x.baseAddress, s.in, 0, c.baseAddress, s.in)
                                    case .factor:
                                        r = kf_syrk(context, n, s.in, 1, x.baseAddress, s.in, 0, c.baseAddress, s.in)
                                    }
                                    if r != KF_OK { status = r }
                                }
                            }
                        }
                    }
                }
            }
            guard status == KF_OK else {
                throw CLIError("kernel failed: \(String(cString: kf_context_last_error(context)))")
            }
            let reference = time {
                y.withUnsafeMutableBufferPointer { c in
                    for (s, d) in zip(shapes, data) {
                        d.x.withUnsafeBufferPointer { x in
                            d.w.withUnsafeBufferPointer { w in
                                d.g.withUnsafeBufferPointer { g in
                                    let m = Int32(n), o = Int32(s.out), i = Int32(s.in)
                                    switch product {
                                    case .forward:
                                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, o, i, 1, x.baseAddress, i,
                                                    w.baseAddress, i, 0, c.baseAddress, o)
                                    case .backward:
                                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, i, o, 1, g.baseAddress, o,
                                                    w.baseAddress, i, 0, c.baseAddress, i)
                                    case .gradient:
                                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o, i, m, 1, g.baseAddress, o,
                                                    x.baseAddress, i, 0, c.baseAddress, i)
                                    case .factor:
                                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i, i, m, 1, x.baseAddress, i,
                                                    x.baseAddress, i, 0, c.baseAddress, i)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let oursRate = Spread(ours.map { flops / $0 / 1e9 })
            let referenceRate = Spread(reference.map { flops / $0 / 1e9 })
            lines.append([pad(label(product), 28), padLeft(oursRate.format(1), 22), padLeft(referenceRate.format(1), 22),
                          padLeft(String(format: "%.2f", oursRate.median / referenceRate.median), 6)].joined(separator: "  "))
        }
        return lines
    }

    /// The variants of table (b).
    struct Variant {
        var name: String
        var kind: OptimizerKind
        var inverseInterval: Int?
        var statisticsSubsample: Int?
    }

    var variants: [Variant] {
        [Variant(name: "SGD", kind: .sgd),
         Variant(name: "Adam", kind: .adam),
         Variant(name: "FOOF T=1", kind: .foof, inverseInterval: 1, statisticsSubsample: 0),
         Variant(name: "FOOF T=100 S=10", kind: .foof, inverseInterval: 100, statisticsSubsample: 10),
         Variant(name: "K-FAC T=1", kind: .kfac, inverseInterval: 1, statisticsSubsample: 0),
         Variant(name: "K-FAC T=100 S=10", kind: .kfac, inverseInterval: 100, statisticsSubsample: 10)]
    }

    /// Table (b): the whole training step per algorithm, as a ratio to SGD's.
    func stepTable() throws -> [String] {
        let task: TrainingTask = widths.count >= 3 && widths.first == widths.last ? .autoencoder : .classify
        let configuration = RunConfiguration(
            data: .curves, task: task, widths: widths, activation: Defaults.activation(task), bias: true,
            batchSize: batch, seed: 1, optimizers: [], hyperparameters: [:], evalExamples: 1)
        var generator = SeededGenerator(seed: 11)
        // A few batches to cycle through: inputs in [0, 1), one-hot or input targets.
        let batches: [(Tensor, Tensor)] = try (0..<4).map { _ in
            let x = try Tensor(shape: [batch, widths[0]],
                               scalars: (0..<(batch * widths[0])).map { _ in Float(generator.next() >> 40) / Float(1 << 24) })
            if task == .autoencoder { return (x, x) }
            let classes = widths.last!
            let labels = (0..<batch).map { _ in Int(generator.next() % UInt64(classes)) }
            return (x, try Dataset.oneHot(labels, classes: classes))
        }
        var lines: [String] = []
        lines.append([pad("training step", 18), padLeft("ms/step", 22), padLeft("vs SGD", 7),
                      "  optimizer memory, MiB: total (per layer)"].joined(separator: "  "))
        var sgdMedian: Double?
        for variant in variants {
            var hyper = Defaults.hyperparameters(variant.kind, task: task)
            if variant.kind.isSecondOrder {
                hyper.inverseInterval = variant.inverseInterval
                hyper.statisticsSubsample = variant.statisticsSubsample
            }
            let trainer = try Trainer(model: configuration.makeModel(), loss: configuration.makeLoss(),
                                      optimizer: hyper.makeOptimizer(variant.kind), batchSize: batch, seed: 1)
            // Steps per sample: whole refresh periods, so that amortised costs are counted fairly.
            let stepsPerSample = max(10, hyper.inverseInterval ?? 1)
            var next = 0
            func step() throws {
                let (x, y) = batches[next % batches.count]
                next += 1
                try trainer.trainStep(input: x, target: y)
            }
            try step()  // the first step: allocations and the first inverses
            var samples: [Double] = []
            for _ in 0..<repeats {
                let start = Date()
                for _ in 0..<stepsPerSample { try step() }
                samples.append(Date().timeIntervalSince(start) / Double(stepsPerSample))
            }
            let spread = Spread(samples)
            if variant.kind == .sgd { sgdMedian = spread.median }
            let ratio = sgdMedian.map { String(format: "%.2f", spread.median / $0) } ?? "-"
            let memory = try layerMemory(variant, hyper: hyper)
            let memoryText = String(format: "%.1f (", Double(trainer.optimizer.memoryBytes) / 1_048_576)
                + memory.map { String(format: "%.1f", Double($0) / 1_048_576) }.joined(separator: ", ") + ")"
            lines.append([pad(variant.name, 18), padLeft(spread.format(1, scale: 1000), 22), padLeft(ratio, 7),
                          "  " + memoryText].joined(separator: "  "))
        }
        return lines
    }

    /// kf_optimizer_memory_bytes of an optimizer holding one layer, per layer of the model.
    func layerMemory(_ variant: Variant, hyper: Hyperparameters) throws -> [Int] {
        var p = kf_optimizer_params()
        let algorithm: kf_algorithm
        switch variant.kind {
        case .sgd: algorithm = KF_ALGO_SGD
        case .adam: algorithm = KF_ALGO_ADAM
        case .foof: algorithm = KF_ALGO_FOOF
        case .kfac: algorithm = KF_ALGO_KFAC
        case .ekfac: algorithm = KF_ALGO_EKFAC
        }
        _ = kf_optimizer_params_init(&p, algorithm)
        return try shapes.map { shape in
            var optimizer: OpaquePointer?
            guard kf_optimizer_create(&p, nil, &optimizer) == KF_OK, let optimizer else {
                throw CLIError("kf_optimizer_create failed")
            }
            defer { kf_optimizer_destroy(optimizer) }
            var lp = kf_layer_params()
            _ = kf_layer_params_init(&lp, shape.out, shape.in)
            var index = 0
            guard kf_optimizer_add_layer(optimizer, &lp, &index) == KF_OK else {
                throw CLIError("kf_optimizer_add_layer failed: \(String(cString: kf_optimizer_last_error(optimizer)))")
            }
            _ = kf_optimizer_reserve_batch(optimizer, batch)
            var bytes = 0
            _ = kf_optimizer_memory_bytes(optimizer, &bytes)
            return bytes
        }
    }
}
