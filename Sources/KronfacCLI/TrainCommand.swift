import ArgumentParser
import Foundation
import Kronfac

extension TrainingTask: ExpressibleByArgument {}
extension ActivationChoice: ExpressibleByArgument {}

/// `kronfac train`: the comparison of optimizers on one network and data set.
public struct TrainCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train one network with several optimizers side by side and compare them.",
        discussion: """
            Every optimizer trains the same network from the same initial weights on the same \
            mini-batches. At every logged step the training loss is measured on a fixed subset of the \
            training data (the same for every optimizer) and the test loss on the test data. The run \
            ends with a table per optimizer; --log and --plot write the curves.

            Defaults per task, chosen by benchmarks/sweep.sh (see benchmarks/README.md):
              classify:     FOOF lr 0.1 damping 0.1; K-FAC lr 0.01 damping 0.01; Adam lr 1e-3;
                            SGD lr 0.03 momentum 0.9; batch 100; 1500 steps
              autoencoder:  FOOF lr 0.1 damping 10 momentum 0.5; K-FAC lr 0.03 damping 3
                            momentum 0.5; Adam lr 1e-3; SGD lr 0.01 momentum 0.5; batch 500;
                            600 steps
              FOOF, K-FAC and EKFAC refresh their inverses every 100 steps (T) from statistics
              of the 10 steps before each refresh (S), as Benzing 2022 does for dense nets.
            """)

    @Option(name: .long, help: ArgumentHelp(
        "fashion-mnist | curves | idx:DIR | csv:FILE (default: Fashion-MNIST when installed, otherwise curves).",
        discussion: "idx:DIR reads train-images-idx3-ubyte and train-labels-idx1-ubyte (plain or .gz) and the t10k-* pair when present, otherwise holds out a sixth of the training data; csv:FILE has one example per line, class labels in the last column.",
        valueName: "source"))
    public var data: String?

    @Option(name: .long, help: ArgumentHelp("classify | autoencoder (default: autoencoder for curves, else classify).", valueName: "task"))
    public var task: TrainingTask?

    @Option(name: .long, help: ArgumentHelp(
        "Layer widths, input first (default: 784-1000-1000-1000-10 for classify, with the data's input width and classes; 784-1000-500-250-30 for autoencoder), or a small CNN for classify, e.g. conv:16-32,dense:128.",
        discussion: "An autoencoder's widths are its encoder, mirrored into the decoder: 784-1000-500-250-30 trains 784-1000-500-250-30-250-500-1000-784 with a linear code layer. conv:16-32,dense:128 trains, on square single-channel images, a 3x3 convolution (padding 1) with 16 and then 32 channels, each followed by the activation and 2x2 average pooling, then flatten, a dense layer of 128 and the output layer; conv:16-32,gap pools each channel globally instead of flattening (then FOOF and K-FAC factor the convolutions with K-FAC-reduce, otherwise with K-FAC-expand, one loss term per image).",
        valueName: "widths"))
    public var model: String?

    @Option(name: .long, help: ArgumentHelp("relu | tanh | sigmoid (default: relu for classify, tanh for autoencoder).", valueName: "name"))
    public var activation: ActivationChoice?

    @Flag(inversion: .prefixedNo, help: "Give every dense layer a bias (default: on).")
    public var bias: Bool?

    @Option(name: .long, help: ArgumentHelp("Comma-separated: foof, kfac, ekfac, adam, sgd (default: foof,kfac,adam,sgd).", valueName: "list"))
    public var optimizers: String?

    @Option(name: .long, help: ArgumentHelp("Training steps per optimizer (default: 1500 for classify, 600 for autoencoder).", valueName: "n"))
    public var steps: Int?

    @Option(name: .long, help: ArgumentHelp("Train this many epochs instead of --steps.", valueName: "n"))
    public var epochs: Int?

    @Option(name: .long, help: ArgumentHelp("Examples per mini-batch (default: 100 for classify, 500 for autoencoder).", valueName: "n"))
    public var batchSize: Int?

    @Option(name: .customLong("lr"), help: ArgumentHelp(
        "Learning rate: one value for all, or per optimizer, e.g. --lr foof=0.5,adam=1e-3 (repeatable).", valueName: "values"))
    public var learningRates: [String] = []

    @Option(name: .customLong("damping"), help: ArgumentHelp(
        "Damping of FOOF, K-FAC and EKFAC: one value or per optimizer, e.g. --damping foof=1,kfac=0.3.", valueName: "values"))
    public var dampings: [String] = []

    @Option(name: .customLong("momentum"), help: ArgumentHelp(
        "Momentum in [0, 1): one value or per optimizer, e.g. --momentum sgd=0.9 (Adam ignores it).", valueName: "values"))
    public var momenta: [String] = []

    @Option(name: .customLong("inverse-interval"), help: ArgumentHelp(
        "Steps between the inverse refreshes of FOOF, K-FAC and EKFAC (default: 100); one value or per optimizer.", valueName: "values"))
    public var inverseIntervals: [String] = []

    @Option(name: .customLong("stats-subsample"), help: ArgumentHelp(
        "Take curvature statistics only on the S steps before each refresh (default: 10; 0 = every step).", valueName: "values"))
    public var statisticsSubsamples: [String] = []

    @Option(name: .long, help: ArgumentHelp("Seed of the initial weights, the shuffling and the sampled targets (default: 1).", valueName: "n"))
    public var seed: UInt64?

    @Option(name: .long, help: ArgumentHelp("OpenBLAS threads (default: OpenBLAS's choice, one per core).", valueName: "n"))
    public var threads: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Write the curves as CSV: optimizer,step,seconds,train_loss,test_loss[,test_accuracy].", valueName: "file.csv"))
    public var log: String?

    @Option(name: .long, help: ArgumentHelp("Draw training loss against steps and seconds as SVG.", valueName: "file.svg"))
    public var plot: String?

    @Option(name: .long, help: ArgumentHelp("Evaluate and log every n steps (default: about 30 points per run).", valueName: "n"))
    public var logEvery: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Examples of the fixed training subset and of the test subset evaluated at every logged step (default: 2000); the final table's test columns use the whole test set.",
        valueName: "n"))
    public var evalExamples: Int?

    @Option(name: .long, help: ArgumentHelp("Save model and optimizer state into this directory periodically.", valueName: "dir"))
    public var checkpoint: String?

    @Option(name: .long, help: ArgumentHelp("Save a checkpoint every n steps (default: 500, and at the end of each run).", valueName: "n"))
    public var checkpointEvery: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Continue the runs saved in this directory bit-exactly (settings come from the directory; --steps may extend them).",
        valueName: "dir"))
    public var resume: String?

    @Flag(name: .long, help: ArgumentHelp(
        "Data-parallel training over MPI: run under mpirun; each process trains on its part of every batch.",
        discussion: "Needs a kronfac built with the package trait MPI (swift build -c release --traits MPI). Every process loads the same data; rank 0 prints and writes the log, plot and checkpoints. Example: mpirun -np 2 kronfac train --distributed --threads 1 ..."))
    public var distributed = false

    /// The largest model accepted (its weights alone take 1 GiB).
    static let maximumParameters = 1 << 28

    public init() {}

    public func validate() throws {
        do {
            try check()
        } catch let error as CLIError {
            throw ValidationError(error.message)
        }
    }

    private func check() throws {
        func positive(_ value: Int?, _ name: String) throws {
            if let value, value < 1 { throw ValidationError("\(name) must be at least 1, got \(value)") }
        }
        try positive(steps, "--steps")
        try positive(epochs, "--epochs")
        try positive(batchSize, "--batch-size")
        try positive(threads, "--threads")
        try positive(logEvery, "--log-every")
        try positive(evalExamples, "--eval-examples")
        try positive(checkpointEvery, "--checkpoint-every")
        if steps != nil && epochs != nil { throw ValidationError("give --steps or --epochs, not both") }
        if let threads, threads > 1024 { throw ValidationError("--threads \(threads) is more than 1024") }
        if let resume, let checkpoint, resume != checkpoint {
            throw ValidationError("--resume \(resume) keeps saving there; --checkpoint \(checkpoint) names another directory")
        }
        if let model, try ConvolutionalModel.parse(model) == nil { _ = try Widths.parse(model) }
        if let optimizers { _ = try OptimizerKind.parseList(optimizers) }
        if let data { _ = try DataSource(parsing: data) }
        _ = try overrides()
    }

    /// The per-optimizer overrides of the command line.
    struct Overrides {
        var learningRate, damping, momentum, inverseInterval, statisticsSubsample: PerOptimizerValues
    }

    func overrides() throws -> Overrides {
        func integer(_ v: Double, _ minimum: Double) -> String? {
            v == v.rounded() && v >= minimum && v <= 1e9 ? nil : "must be an integer >= \(Int(minimum))"
        }
        return Overrides(
            learningRate: try PerOptimizerValues.parse(learningRates, option: "--lr") { $0 > 0 ? nil : "must be > 0" },
            damping: try PerOptimizerValues.parse(dampings, option: "--damping") { $0 > 0 ? nil : "must be > 0" },
            momentum: try PerOptimizerValues.parse(momenta, option: "--momentum") { $0 >= 0 && $0 < 1 ? nil : "must be in [0, 1)" },
            inverseInterval: try PerOptimizerValues.parse(inverseIntervals, option: "--inverse-interval") { integer($0, 1) },
            statisticsSubsample: try PerOptimizerValues.parse(statisticsSubsamples, option: "--stats-subsample") { integer($0, 0) })
    }

    /// The hyperparameters of `kind`: `base` with the command line's overrides.
    func hyperparameters(_ kind: OptimizerKind, base: Hyperparameters, overrides: Overrides) throws -> Hyperparameters {
        var h = base
        if let v = overrides.learningRate.value(for: kind) { h.learningRate = v }
        if let v = overrides.momentum.value(for: kind), kind != .adam { h.momentum = v }
        if kind.isSecondOrder {
            if let v = overrides.damping.value(for: kind) { h.damping = v }
            if let v = overrides.inverseInterval.value(for: kind) { h.inverseInterval = Int(v) }
            if let v = overrides.statisticsSubsample.value(for: kind) { h.statisticsSubsample = Int(v) }
        } else {
            for (values, option) in [(overrides.damping, "--damping"), (overrides.inverseInterval, "--inverse-interval"),
                                     (overrides.statisticsSubsample, "--stats-subsample")] where values.named[kind] != nil {
                throw CLIError("\(option) \(kind.rawValue)=...: \(kind.displayName) has no damping or curvature factors")
            }
        }
        if kind == .adam, overrides.momentum.named[.adam] != nil {
            throw CLIError("--momentum adam=...: Adam has no momentum setting (its beta1 is 0.9)")
        }
        return h
    }

    /// The data source and task, before anything is loaded: from the checkpoint when resuming.
    public func dataAndTask(saved: RunConfiguration?) throws -> (DataSource, TrainingTask, note: String?) {
        if let saved {
            let source = try data.map(DataSource.init(parsing:)) ?? saved.data
            return (source, task ?? saved.task, nil)
        }
        if let data {
            let source = try DataSource(parsing: data)
            return (source, task ?? source.defaultTask, nil)
        }
        if task == .classify && !DataLoader.fashionMNISTInstalled {
            throw CLIError("no --data given and Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); "
                + "the curves data set has no labels for --task classify")
        }
        let (source, note) = DataLoader.defaultSource()
        return (source, task ?? source.defaultTask, note)
    }

    /// The full configuration for data with `inputWidth` values per example (and `classes`).
    public func configuration(source: DataSource, task: TrainingTask, inputWidth: Int, classes: Int?,
                              saved: RunConfiguration?) throws -> RunConfiguration {
        var widths: [Int]
        var convolution: ConvolutionalModel?
        if let model, let parsed = try ConvolutionalModel.parse(model) {
            guard task == .classify else { throw CLIError("--model \(model) is a classifier; conv: models need --task classify") }
            let classes = classes ?? 10
            widths = [inputWidth] + parsed.hidden + [classes]
            let parameters = try parsed.parameterCount(inputWidth: inputWidth, classes: classes)
            guard parameters <= Self.maximumParameters else {
                throw CLIError("--model \(model) has \(parameters) weights; kronfac trains at most \(Self.maximumParameters)")
            }
            convolution = parsed
        } else if let model {
            let parsed = try Widths.parse(model)
            widths = task == .autoencoder ? Widths.mirrored(parsed) : parsed
        } else if let saved {
            widths = saved.widths
            convolution = saved.convolution
        } else if task == .classify {
            widths = [inputWidth] + Defaults.classifierHidden + [classes ?? 10]
        } else {
            widths = Widths.mirrored([inputWidth] + Defaults.autoencoderEncoder.dropFirst())
        }
        guard widths.first == inputWidth else {
            throw CLIError("--model \(Widths.format(widths)) takes \(widths[0]) inputs, the data has \(inputWidth) values per example")
        }
        if task == .classify, let classes, widths.last != classes {
            throw CLIError("--model \(Widths.format(widths)) gives \(widths.last!) outputs, the data has \(classes) classes")
        }
        let parameters = convolution != nil ? 0 : zip(widths, widths.dropFirst()).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        guard parameters <= Double(Self.maximumParameters) else {
            throw CLIError("--model \(Widths.format(widths)) has \(Int(parameters)) weights; kronfac trains at most \(Self.maximumParameters)")
        }
        if task == .autoencoder && widths.count < 3 {
            throw CLIError("an autoencoder needs at least an input and a code width, e.g. --model 784-30")
        }
        let kinds = try optimizers.map(OptimizerKind.parseList) ?? saved?.optimizers ?? Defaults.optimizers
        let overrides = try self.overrides()
        for values in [overrides.learningRate, overrides.damping, overrides.momentum, overrides.inverseInterval,
                       overrides.statisticsSubsample] {
            if let extra = values.named.keys.sorted().first(where: { !kinds.contains($0) }) {
                throw CLIError("a setting is given for \(extra.rawValue), which is not in --optimizers \(kinds.map(\.rawValue).joined(separator: ","))")
            }
        }
        var hyper: [String: Hyperparameters] = [:]
        for kind in kinds {
            let base = saved?.hyperparameters[kind.rawValue] ?? Defaults.hyperparameters(kind, task: task)
            hyper[kind.rawValue] = try hyperparameters(kind, base: base, overrides: overrides)
        }
        return RunConfiguration(
            data: source, task: task, widths: widths,
            activation: activation ?? saved?.activation ?? Defaults.activation(task),
            bias: bias ?? saved?.bias ?? true,
            batchSize: batchSize ?? saved?.batchSize ?? Defaults.batchSize(task),
            seed: seed ?? saved?.seed ?? 1,
            optimizers: kinds, hyperparameters: hyper,
            evalExamples: evalExamples ?? saved?.evalExamples ?? Defaults.evalExamples, convolution: convolution)
    }

    public func run() throws {
        guard distributed else { return try run(role: nil) }
        let role = try DistributedTraining.start()
        do {
            try run(role: role)
        } catch {
            if role.ranks > 1 {
                DistributedTraining.abort(role, message: (error as? CLIError)?.message ?? (error as? KronfacError)?.message ?? "\(error)")
            }
            DistributedTraining.finish()
            throw error
        }
        DistributedTraining.finish()
    }

    /// The run; `role` for a process of a distributed run (only rank 0 prints).
    private func run(role: DistributedTraining.Role?) throws {
        let console = role.map { $0.isRoot } ?? true ? Console() : Console(liveProgress: false, out: { _ in }, err: { _ in })
        let savedRun = try resume.map(CheckpointDirectory.load)
        let saved = savedRun?.configuration
        let (source, task, note) = try dataAndTask(saved: saved)
        if let note { console.note(note) }
        if let threads { try BLASInfo.setThreads(threads) }
        let loadStart = Date()
        let loaded = try DataLoader.load(source, task: task, seed: seed ?? saved?.seed ?? 1)
        let configuration = try self.configuration(source: source, task: task, inputWidth: loaded.inputWidth,
                                                   classes: loaded.classes, saved: saved)
        if let role {
            try DistributedTraining.checkBatches(role, trainingCount: loaded.training.count, batchSize: configuration.batchSize)
        }
        let batchesPerEpoch = (loaded.training.count + configuration.batchSize - 1) / configuration.batchSize
        let totalSteps = epochs.map { $0 * batchesPerEpoch } ?? steps ?? savedRun?.steps ?? Defaults.steps(task)
        let plan = RunPlan(
            configuration: configuration, steps: totalSteps,
            logEvery: logEvery ?? savedRun?.logEvery ?? max(1, (totalSteps + 29) / 30),
            checkpointDirectory: resume ?? checkpoint, checkpointEvery: checkpointEvery ?? savedRun?.checkpointEvery ?? 500,
            resume: resume != nil, logPath: log ?? savedRun?.log, plotPath: plot ?? savedRun?.plot,
            distribution: role)

        console.line("data: \(loaded.summary) (loaded in \(String(format: "%.1f", Date().timeIntervalSince(loadStart))) s)")
        console.line("model: \(configuration.modelSummary); \(configuration.lossSummary)")
        let epochsText = String(format: "%.2f", Double(totalSteps) / Double(batchesPerEpoch))
        console.line("training: \(totalSteps) steps of batch \(configuration.batchSize) (\(epochsText) epochs) per optimizer, seed \(configuration.seed)")
        console.line("BLAS: \(BLASInfo.summary); \(CoreLibrary.buildInfo)")
        if let role { console.line("distributed: \(role.ranks) MPI processes, each training on its part of every batch") }
        if let hint = BLASInfo.slowCoreHint { console.line(hint) }

        let runner = try ComparisonRunner(plan: plan, data: loaded, console: console)
        let results = try runner.run()
        console.line()
        console.line("results after \(totalSteps) steps of batch \(configuration.batchSize):")
        let trainingExamples = min(configuration.evalExamples, loaded.training.count)
        for line in ResultsTable.render(results, classify: task == .classify,
                                        trainingExamples: trainingExamples, testExamples: loaded.test.count) {
            console.line(line)
        }
        if let path = plan.logPath { console.line("log: \(path)") }
        if let path = plan.plotPath { console.line("plot: \(path)") }
        if let directory = plan.checkpointDirectory { console.line("checkpoints: \(directory)") }
    }
}
