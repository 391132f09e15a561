import Foundation

/// A checkpoint directory of a comparison (`--checkpoint DIR`, `--resume DIR`):
///
///     run.json          the configuration (data, model, optimizers, settings, seed)
///     NAME.kftrain      each optimizer's trainer checkpoint (model, optimizer state, loop position)
///     NAME.json         each optimizer's log rows, step and training time so far
///
/// A resumed run rebuilds the trainers from run.json and continues each from its checkpoint, so
/// the parameters after N steps are bit-for-bit those of an uninterrupted run of N steps.
public enum CheckpointDirectory {
    static let formatVersion = 1

    /// run.json: the configuration and the plan's settings, which a resumption takes as its defaults.
    public struct SavedRun: Codable, Equatable {
        public var format: Int
        public var configuration: RunConfiguration
        public var steps: Int
        public var logEvery: Int
        public var checkpointEvery: Int
        public var log: String?
        public var plot: String?

        init(_ plan: RunPlan) {
            format = CheckpointDirectory.formatVersion
            configuration = plan.configuration
            steps = plan.steps
            logEvery = plan.logEvery
            checkpointEvery = plan.checkpointEvery
            log = plan.logPath
            plot = plan.plotPath
        }
    }

    static func configurationPath(_ directory: String) -> String {
        (directory as NSString).appendingPathComponent("run.json")
    }

    static func trainerPath(_ directory: String, kind: OptimizerKind) -> String {
        (directory as NSString).appendingPathComponent("\(kind.rawValue).kftrain")
    }

    static func statePath(_ directory: String, kind: OptimizerKind) -> String {
        (directory as NSString).appendingPathComponent("\(kind.rawValue).json")
    }

    /// What a directory's run.json holds.
    /// - Throws: `CLIError` when the directory or its run.json is missing or unreadable.
    public static func load(_ directory: String) throws -> SavedRun {
        let path = configurationPath(directory)
        guard FileManager.default.fileExists(atPath: directory) else {
            throw CLIError("--resume \(directory): no such directory")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError("--resume \(directory): no run.json there (not a kronfac checkpoint directory)")
        }
        let saved: SavedRun
        do {
            saved = try JSONDecoder().decode(SavedRun.self, from: data)
        } catch {
            throw CLIError("--resume \(directory): run.json is corrupt or from another version of kronfac")
        }
        guard saved.format == formatVersion else {
            throw CLIError("--resume \(directory): checkpoint format \(saved.format), this kronfac reads \(formatVersion)")
        }
        return saved
    }

    /// Creates the directory (fresh run: removing what an earlier run left) or checks that it holds
    /// the plan's configuration (resumed run), then writes run.json.
    static func prepare(_ directory: String, plan: RunPlan) throws {
        if plan.resume {
            let saved = try load(directory)
            if let difference = difference(saved.configuration, plan.configuration) {
                throw CLIError("--resume \(directory): the saved run has \(difference)")
            }
        } else {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw CLIError("--checkpoint \(directory): cannot create the directory: \(error.localizedDescription)")
            }
            for kind in OptimizerKind.allCases {
                try? FileManager.default.removeItem(atPath: statePath(directory, kind: kind))
                try? FileManager.default.removeItem(atPath: trainerPath(directory, kind: kind))
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(SavedRun(plan))
        try writeFile(configurationPath(directory), String(decoding: data, as: UTF8.self), what: "the checkpoint's run.json")
    }

    /// Says how `saved` differs from `current` ("model 784-100-10, this command 784-200-10"), or nil.
    public static func difference(_ saved: RunConfiguration, _ current: RunConfiguration) -> String? {
        func say(_ what: String, _ a: String, _ b: String) -> String { "\(what) \(a); this command has \(b)" }
        if saved.data != current.data { return say("--data", saved.data.argument, current.data.argument) }
        if saved.task != current.task { return say("--task", saved.task.rawValue, current.task.rawValue) }
        if saved.convolution != current.convolution {
            return say("model", saved.convolution?.description ?? Widths.format(saved.widths),
                       current.convolution?.description ?? Widths.format(current.widths))
        }
        if saved.widths != current.widths {
            return say("model", Widths.format(saved.widths), Widths.format(current.widths))
        }
        if saved.activation != current.activation {
            return say("--activation", saved.activation.rawValue, current.activation.rawValue)
        }
        if saved.bias != current.bias { return say("biases", saved.bias ? "on" : "off", current.bias ? "on" : "off") }
        if saved.batchSize != current.batchSize { return say("--batch-size", "\(saved.batchSize)", "\(current.batchSize)") }
        if saved.seed != current.seed { return say("--seed", "\(saved.seed)", "\(current.seed)") }
        if saved.optimizers != current.optimizers {
            return say("--optimizers", saved.optimizers.map(\.rawValue).joined(separator: ","),
                       current.optimizers.map(\.rawValue).joined(separator: ","))
        }
        for kind in saved.optimizers where saved.hyperparameters(kind) != current.hyperparameters(kind) {
            return say("\(kind.rawValue) settings", saved.hyperparameters(kind).summary, current.hyperparameters(kind).summary)
        }
        if saved.evalExamples != current.evalExamples {
            return say("--eval-examples", "\(saved.evalExamples)", "\(current.evalExamples)")
        }
        return nil
    }

    static func loadState(_ directory: String, kind: OptimizerKind) throws -> RunResult? {
        let path = statePath(directory, kind: kind)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            let decoder = JSONDecoder()
            decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            let state = try decoder.decode(RunResult.self, from: data)
            guard state.kind == kind else { throw CLIError("") }
            return state
        } catch {
            throw CLIError("--resume \(directory): \(kind.rawValue).json is corrupt")
        }
    }

    static func saveState(_ directory: String, _ result: RunResult) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Non-finite losses (a diverged run) are written as strings.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let data = try encoder.encode(result)
        try writeFile(statePath(directory, kind: result.kind), String(decoding: data, as: UTF8.self),
                      what: "the checkpoint state")
    }
}
