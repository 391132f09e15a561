import Foundation
import Kronfac

/// Everything that determines a comparison's training runs bit for bit: the data, the model, the
/// optimizers and their settings, the seed. `--resume` refuses a directory saved with another one.
public struct RunConfiguration: Codable, Equatable, Sendable {
    public var data: DataSource
    public var task: TrainingTask
    /// Every layer's width, input to output (an autoencoder's are already mirrored); for a
    /// convolutional model the input width and the dense widths after the convolutions.
    public var widths: [Int]
    /// The convolutional part of a classifier (`--model conv:...`), nil for a dense network.
    public var convolution: ConvolutionalModel?
    public var activation: ActivationChoice
    public var bias: Bool
    public var batchSize: Int
    public var seed: UInt64
    public var optimizers: [OptimizerKind]
    /// Keyed by `OptimizerKind.rawValue`.
    public var hyperparameters: [String: Hyperparameters]
    /// The size of the fixed training subset (and test subset) evaluated at every logged step.
    public var evalExamples: Int

    public init(data: DataSource, task: TrainingTask, widths: [Int], activation: ActivationChoice, bias: Bool,
                batchSize: Int, seed: UInt64, optimizers: [OptimizerKind],
                hyperparameters: [String: Hyperparameters], evalExamples: Int, convolution: ConvolutionalModel? = nil) {
        self.convolution = convolution
        self.data = data
        self.task = task
        self.widths = widths
        self.activation = activation
        self.bias = bias
        self.batchSize = batchSize
        self.seed = seed
        self.optimizers = optimizers
        self.hyperparameters = hyperparameters
        self.evalExamples = evalExamples
    }

    public func hyperparameters(_ kind: OptimizerKind) -> Hyperparameters {
        hyperparameters[kind.rawValue] ?? Defaults.hyperparameters(kind, task: task)
    }

    /// The index of the autoencoder's code layer (linear), nil for a classifier.
    var codeLayer: Int? {
        task == .autoencoder ? (widths.count - 1) / 2 - 1 : nil
    }

    /// The network: dense layers with the activation between them; the output layer gives logits
    /// and an autoencoder's code layer is linear. Initialised from `seed`, the same for every optimizer.
    public func makeModel() -> Sequential {
        if let convolution {
            let activation = self.activation
            let layers = (try? convolution.layers(inputWidth: widths[0], classes: widths.last!, bias: bias) {
                switch activation {
                case .relu: return ReLU()
                case .tanh: return Tanh()
                case .sigmoid: return Sigmoid()
                }
            }) ?? []
            precondition(!layers.isEmpty, "the convolutional model was validated with the configuration")
            return Sequential(layers, seed: seed)
        }
        var layers: [any Layer] = []
        let initialization: Initialization = activation == .relu ? .he : .glorot
        for index in 0..<(widths.count - 1) {
            layers.append(Dense(widths[index], widths[index + 1], bias: bias, initialization: initialization))
            guard index < widths.count - 2, index != codeLayer else { continue }
            switch activation {
            case .relu: layers.append(ReLU())
            case .tanh: layers.append(Tanh())
            case .sigmoid: layers.append(Sigmoid())
            }
        }
        return Sequential(layers, seed: seed)
    }

    public func makeLoss() -> any Loss {
        task == .classify ? SoftmaxCrossEntropy() : SigmoidCrossEntropy()
    }

    /// "784-1000-1000-1000-10, ReLU, with biases".
    public var modelSummary: String {
        let name: String
        switch activation {
        case .relu: name = "ReLU"
        case .tanh: name = "tanh"
        case .sigmoid: name = "sigmoid"
        }
        let code = codeLayer.map { ", linear code layer of \(widths[$0 + 1])" } ?? ""
        if let convolution {
            let side = Int(Double(widths[0]).squareRoot().rounded())
            return "\(convolution) on \(side)x\(side) images (3x3 convolutions with padding 1, 2x2 average pooling, "
                + "\(convolution.globalPooling ? "global average pooling" : "flatten"), \(widths.last!) outputs), "
                + "\(name), \(bias ? "with" : "no") biases"
        }
        return "\(Widths.format(widths)), \(name)\(code), \(bias ? "with" : "no") biases"
    }

    public var lossSummary: String {
        task == .classify ? "softmax cross-entropy" : "sigmoid cross-entropy summed over the outputs"
    }
}

/// One logged step of one optimizer's run.
public struct LogRow: Codable, Equatable, Sendable {
    public var step: Int
    /// Training time up to this step, evaluation and checkpoints excluded.
    public var seconds: Double
    /// The mean loss on the fixed training subset.
    public var trainLoss: Float
    /// The mean loss on the test subset.
    public var testLoss: Float
    /// The test subset's accuracy (classification).
    public var testAccuracy: Float?

    public init(step: Int, seconds: Double, trainLoss: Float, testLoss: Float, testAccuracy: Float? = nil) {
        self.step = step
        self.seconds = seconds
        self.trainLoss = trainLoss
        self.testLoss = testLoss
        self.testAccuracy = testAccuracy
    }
}

/// One optimizer's run: what the table, the CSV and the plot show. Also the state saved in a
/// checkpoint directory beside the trainer's checkpoint.
public struct RunResult: Codable, Equatable, Sendable {
    public var kind: OptimizerKind
    public var rows: [LogRow] = []
    /// Steps taken.
    public var steps = 0
    /// Training time, evaluation and checkpoints excluded.
    public var trainingSeconds = 0.0
    /// The loss and accuracy on the whole test set after the last step (nil until measured).
    public var finalTestLoss: Float?
    public var finalTestAccuracy: Float?
    /// The step at which the run stopped with non-finite values, if it did.
    public var divergedAt: Int?
    /// What the optimizer holds in the C core (factors, inverses, momentum, workspace).
    public var optimizerBytes = 0

    public init(kind: OptimizerKind) { self.kind = kind }

    public var secondsPerStep: Double? { steps > 0 ? trainingSeconds / Double(steps) : nil }

    /// The lowest training loss logged.
    public var bestTrainLoss: Float? {
        rows.map(\.trainLoss).filter(\.isFinite).min()
    }

    /// The first logged row whose training loss is at or below `target`.
    public func firstRow(reaching target: Float) -> LogRow? {
        rows.first { $0.trainLoss.isFinite && $0.trainLoss <= target }
    }
}

/// The best training loss that every run reached: the largest of the runs' best losses (runs
/// that diverged do not count, or a run stopped at its first steps would set the bar).
public func commonTarget(_ results: [RunResult]) -> Float? {
    let bests = results.filter { $0.divergedAt == nil }.map(\.bestTrainLoss)
    guard !bests.isEmpty, bests.allSatisfy({ $0 != nil }) else { return nil }
    return bests.compactMap { $0 }.max()
}

/// How a comparison runs: the configuration plus what may change between a run and its resumption.
public struct RunPlan: Sendable {
    public var configuration: RunConfiguration
    /// The steps every optimizer trains (in total, counting the steps before a resumption).
    public var steps: Int
    /// Evaluate and log every this many steps (and at the first and last step).
    public var logEvery: Int
    public var checkpointDirectory: String?
    public var checkpointEvery: Int
    /// Continue the runs saved in `checkpointDirectory`.
    public var resume: Bool
    public var logPath: String?
    public var plotPath: String?
    /// This process's part of a distributed run (nil: not distributed); only rank 0 writes files.
    public var distribution: DistributedTraining.Role?

    public init(configuration: RunConfiguration, steps: Int, logEvery: Int, checkpointDirectory: String? = nil,
                checkpointEvery: Int = 500, resume: Bool = false, logPath: String? = nil, plotPath: String? = nil,
                distribution: DistributedTraining.Role? = nil) {
        self.configuration = configuration
        self.steps = steps
        self.logEvery = logEvery
        self.checkpointDirectory = checkpointDirectory
        self.checkpointEvery = checkpointEvery
        self.resume = resume
        self.logPath = logPath
        self.plotPath = plotPath
        self.distribution = distribution
    }

    /// Whether this process writes the log, the plot and the checkpoints.
    var writesFiles: Bool { distribution?.isRoot ?? true }
}

/// Trains the same network from the same initial weights with each optimizer in turn on the same
/// mini-batches, evaluating on fixed subsets, and writes the log, the plot and checkpoints.
public final class ComparisonRunner {
    public let plan: RunPlan
    public let data: LoadedData
    private let console: Console
    private let trainingSubset: Dataset
    private let testSubset: Dataset
    private var results: [RunResult] = []

    public init(plan: RunPlan, data: LoadedData, console: Console) throws {
        self.plan = plan
        self.data = data
        self.console = console
        let k = plan.configuration.evalExamples
        // A fixed sample of the training data, the same for every optimizer.
        if k >= data.training.count {
            trainingSubset = data.training
        } else {
            trainingSubset = try data.training.split(trainingCount: k, seed: plan.configuration.seed ^ 0x5EED).training
        }
        testSubset = k >= data.test.count ? data.test : try data.test.subset(0..<k)
    }

    private var classify: Bool { plan.configuration.task == .classify }

    /// Runs every optimizer of the plan; returns their results in the plan's order.
    public func run() throws -> [RunResult] {
        results = []
        if let directory = plan.checkpointDirectory, plan.writesFiles {
            try CheckpointDirectory.prepare(directory, plan: plan)
        }
        for kind in plan.configuration.optimizers {
            let result = try run(kind)
            results.append(result)
            try writeOutputs()
        }
        return results
    }

    /// Rewrites the log and the plot with every run so far.
    private func writeOutputs() throws {
        guard plan.writesFiles else { return }
        if let path = plan.logPath {
            try writeFile(path, CSVLog.render(results, classify: classify), what: "the log")
        }
        if let path = plan.plotPath {
            try writeFile(path, SVGPlot.render(results, title: plotTitle), what: "the plot")
        }
    }

    private var plotTitle: String {
        let c = plan.configuration
        return "\(c.data.argument), \(Widths.format(c.widths)), batch \(c.batchSize)"
    }

    private func run(_ kind: OptimizerKind) throws -> RunResult {
        let configuration = plan.configuration
        let hyper = configuration.hyperparameters(kind)
        let trainer = try Trainer(model: configuration.makeModel(), loss: configuration.makeLoss(),
                                  optimizer: hyper.makeOptimizer(kind), batchSize: configuration.batchSize,
                                  seed: configuration.seed)
        if let role = plan.distribution {
            try DistributedTraining.attach(trainer, role: role)
        }
        var result = RunResult(kind: kind)
        if plan.resume, let directory = plan.checkpointDirectory,
           let saved = try CheckpointDirectory.loadState(directory, kind: kind) {
            if saved.steps > 0 {
                try trainer.restore(from: CheckpointDirectory.trainerPath(directory, kind: kind))
                guard trainer.step == saved.steps else {
                    throw CLIError("\(directory): the \(kind.rawValue) checkpoint is at step \(trainer.step), "
                        + "its log at step \(saved.steps) (the directory is inconsistent)")
                }
            }
            result = saved
            if saved.steps >= plan.steps || saved.divergedAt != nil {
                console.note("\(kind.displayName): resumed at step \(saved.steps)\(saved.divergedAt != nil ? " (diverged)" : ""), nothing left to train")
                if result.finalTestLoss == nil, saved.divergedAt == nil {
                    let (loss, accuracy) = try evaluate(trainer.model, data.test)
                    result.finalTestLoss = loss
                    result.finalTestAccuracy = accuracy
                }
                return result
            }
            console.note("\(kind.displayName): resuming at step \(saved.steps) of \(plan.steps)")
            // The final test values belong to the step they were measured at.
            result.finalTestLoss = nil
            result.finalTestAccuracy = nil
        }
        result.optimizerBytes = trainer.optimizer.memoryBytes

        let progress = console.startRun(name: kind.displayName, settings: hyper.summary,
                                        firstStep: result.steps, totalSteps: plan.steps)
        if result.rows.isEmpty {
            result.rows.append(try logRow(trainer, step: 0, seconds: 0))
            progress.logged(result.rows.last!, force: true)
        }
        var batchLoss: Float? = nil
        while trainer.step < plan.steps {
            let step = trainer.step
            var next = min(plan.steps, (step / plan.logEvery + 1) * plan.logEvery)
            if plan.checkpointDirectory != nil {
                next = min(next, (step / plan.checkpointEvery + 1) * plan.checkpointEvery)
            }
            let start = Date()
            do {
                try trainer.fit(data.training, steps: next - step, reportEvery: 1) { report in
                    // An exponential average of the mini-batch losses for the live line.
                    if let previous = batchLoss, previous.isFinite {
                        batchLoss = 0.9 * previous + 0.1 * report.trainingLoss
                    } else {
                        batchLoss = report.trainingLoss
                    }
                    progress.step(report.step, batchLoss: batchLoss!,
                                  trainingSeconds: result.trainingSeconds + Date().timeIntervalSince(start))
                }
            } catch let error as KronfacError where [.nonFinite, .notPositiveDefinite, .noConvergence].contains(error.code) {
                result.trainingSeconds += Date().timeIntervalSince(start)
                result.steps = trainer.step
                result.divergedAt = trainer.step
                progress.diverged(at: trainer.step, reason: error.message)
                try saveCheckpoint(trainer, result)
                return result
            }
            result.trainingSeconds += Date().timeIntervalSince(start)
            result.steps = trainer.step
            if next % plan.logEvery == 0 || next == plan.steps {
                result.rows.append(try logRow(trainer, step: next, seconds: result.trainingSeconds))
                progress.logged(result.rows.last!, force: next == plan.steps)
            }
            if next == plan.steps {
                let (loss, accuracy) = try evaluate(trainer.model, data.test)
                result.finalTestLoss = loss
                result.finalTestAccuracy = accuracy
            }
            if plan.checkpointDirectory != nil, next % plan.checkpointEvery == 0 || next == plan.steps {
                try saveCheckpoint(trainer, result)
            }
        }
        progress.finish(result)
        return result
    }

    private func saveCheckpoint(_ trainer: Trainer, _ result: RunResult) throws {
        guard let directory = plan.checkpointDirectory, plan.writesFiles else { return }
        // The trainer first: a state file always points at a checkpoint that exists.
        try trainer.save(to: CheckpointDirectory.trainerPath(directory, kind: result.kind))
        try CheckpointDirectory.saveState(directory, result)
    }

    private func logRow(_ trainer: Trainer, step: Int, seconds: Double) throws -> LogRow {
        let (trainLoss, _) = try evaluate(trainer.model, trainingSubset, accuracy: false)
        let (testLoss, accuracy) = try evaluate(trainer.model, testSubset)
        return LogRow(step: step, seconds: seconds, trainLoss: trainLoss, testLoss: testLoss, testAccuracy: accuracy)
    }

    /// The mean loss (and accuracy when classifying) over `data`, in chunks, from one forward pass.
    private func evaluate(_ model: Sequential, _ data: Dataset, accuracy: Bool = true) throws -> (Float, Float?) {
        let loss = plan.configuration.makeLoss()
        let chunk = 500
        var total = 0.0
        var correct = 0
        var start = 0
        while start < data.count {
            let range = start..<min(start + chunk, data.count)
            let output = try model.forward(data.inputs.rows(range))
            let target = data.targets.rows(range)
            total += Double(try loss.value(output, target: target)) * Double(range.count)
            if classify && accuracy {
                correct += countCorrect(output, target)
            }
            start = range.upperBound
        }
        let meanLoss = Float(total / Double(data.count))
        return (meanLoss, classify && accuracy ? Float(correct) / Float(data.count) : nil)
    }

    private func countCorrect(_ output: Tensor, _ target: Tensor) -> Int {
        let width = output.columnCount
        var correct = 0
        output.withUnsafeBufferPointer { o in
            target.withUnsafeBufferPointer { t in
                for row in 0..<output.rowCount {
                    var best = 0, label = 0
                    for c in 1..<max(width, 1) {
                        if o[row * width + c] > o[row * width + best] { best = c }
                        if t[row * width + c] > t[row * width + label] { label = c }
                    }
                    if best == label { correct += 1 }
                }
            }
        }
        return correct
    }
}

/// Writes text to a file, creating its directory; failures become one-line errors.
func writeFile(_ path: String, _ text: String, what: String) throws {
    let url = URL(fileURLWithPath: path)
    do {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url, options: .atomic)
    } catch {
        throw CLIError("cannot write \(what) to \(path): \(error.localizedDescription)")
    }
}
