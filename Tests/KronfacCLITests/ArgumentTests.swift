import ArgumentParser
import Foundation
import Testing
@testable import KronfacCLI

@Suite("Command-line arguments")
struct ArgumentTests {
    @Test("Widths parse into positive integers and malformed ones name the bad part")
    func widths() throws {
        #expect(try Widths.parse("784-1000-1000-1000-10") == [784, 1000, 1000, 1000, 10])
        #expect(try Widths.parse(" 16,8-4 ") == [16, 8, 4])
        #expect(Widths.mirrored([784, 1000, 500, 30]) == [784, 1000, 500, 30, 500, 1000, 784])
        expectCLIError(mentioning: ["at least two"]) { _ = try Widths.parse("784") }
        expectCLIError(mentioning: ["\"\""]) { _ = try Widths.parse("784--10") }
        expectCLIError(mentioning: ["\"0\""]) { _ = try Widths.parse("784-0-10") }
        expectCLIError(mentioning: ["\"abc\""]) { _ = try Widths.parse("784-abc-10") }
        expectCLIError(mentioning: ["\"5.5\"", "positive integer"]) { _ = try Widths.parse("784-5.5") }
        expectCLIError(mentioning: ["larger"]) { _ = try Widths.parse("784-99999999") }
    }

    @Test("Optimizer lists keep their order and refuse unknown or repeated names")
    func optimizerLists() throws {
        #expect(try OptimizerKind.parseList("sgd,FOOF,k-fac") == [.sgd, .foof, .kfac])
        expectCLIError(mentioning: ["unknown optimizer", "rmsprop", "foof, kfac"]) { _ = try OptimizerKind.parseList("foof,rmsprop") }
        expectCLIError(mentioning: ["twice"]) { _ = try OptimizerKind.parseList("adam,adam") }
        expectCLIError(mentioning: ["unknown optimizer"]) { _ = try OptimizerKind.parseList("foof,") }
    }

    @Test("Per-optimizer values: one for all, or NAME=VALUE, over repeated options")
    func perOptimizerValues() throws {
        let values = try PerOptimizerValues.parse(["0.1", "foof=0.5,adam=1e-3"], option: "--lr") { _ in nil }
        #expect(values.value(for: .foof) == 0.5 && values.value(for: .adam) == 1e-3 && values.value(for: .sgd) == 0.1)
        expectCLIError(mentioning: ["--lr", "\"fast\"", "not a number"]) {
            _ = try PerOptimizerValues.parse(["foof=fast"], option: "--lr") { _ in nil }
        }
        expectCLIError(mentioning: ["unknown optimizer", "\"lbfgs\""]) {
            _ = try PerOptimizerValues.parse(["lbfgs=1"], option: "--lr") { _ in nil }
        }
        expectCLIError(mentioning: ["--momentum", "must be in [0, 1)"]) {
            _ = try PerOptimizerValues.parse(["1.5"], option: "--momentum") { $0 < 1 ? nil : "must be in [0, 1)" }
        }
    }

    @Test("Data sources: the four forms and their errors")
    func dataSources() throws {
        #expect(try DataSource(parsing: "fashion-mnist") == .fashionMNIST)
        #expect(try DataSource(parsing: "curves") == .curves)
        #expect(try DataSource(parsing: "idx:/data/mnist") == .idx("/data/mnist"))
        #expect(try DataSource(parsing: "csv:x.csv") == .csv("x.csv"))
        #expect(try DataSource(parsing: "idx:/data/mnist").argument == "idx:/data/mnist")
        expectCLIError(mentioning: ["unknown data source", "cifar"]) { _ = try DataSource(parsing: "cifar") }
        expectCLIError(mentioning: ["directory"]) { _ = try DataSource(parsing: "idx:") }
        #expect(DataSource.curves.defaultTask == .autoencoder && DataSource.fashionMNIST.defaultTask == .classify)
    }

    @Test("kronfac train parses every option")
    func trainOptions() throws {
        let command = try TrainCommand.parse([
            "--data", "idx:/tmp/x", "--task", "classify", "--model", "16-8-10", "--activation", "tanh", "--no-bias",
            "--optimizers", "foof,sgd", "--steps", "7", "--batch-size", "5", "--lr", "foof=0.2", "--lr", "sgd=0.05",
            "--damping", "2", "--momentum", "sgd=0.5", "--inverse-interval", "3", "--stats-subsample", "1",
            "--seed", "9", "--threads", "1", "--log", "a.csv", "--plot", "a.svg", "--log-every", "2",
            "--eval-examples", "50", "--checkpoint", "ck", "--checkpoint-every", "4",
        ])
        #expect(command.bias == false && command.steps == 7 && command.threads == 1 && command.seed == 9)
        let configuration = try command.configuration(source: .idx("/tmp/x"), task: .classify, inputWidth: 16,
                                                      classes: 10, saved: nil)
        #expect(configuration.widths == [16, 8, 10] && configuration.activation == .tanh && !configuration.bias)
        #expect(configuration.optimizers == [.foof, .sgd] && configuration.batchSize == 5 && configuration.evalExamples == 50)
        let foof = configuration.hyperparameters(.foof)
        #expect(foof.learningRate == 0.2 && foof.damping == 2 && foof.inverseInterval == 3 && foof.statisticsSubsample == 1)
        let sgd = configuration.hyperparameters(.sgd)
        #expect(sgd.learningRate == 0.05 && sgd.momentum == 0.5 && sgd.damping == nil)
    }

    @Test("Defaults follow the task and the data")
    func defaults() throws {
        let classify = try TrainCommand.parse([]).configuration(
            source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        #expect(classify.widths == [784, 1000, 1000, 1000, 10] && classify.batchSize == 100 && classify.activation == .relu)
        #expect(classify.optimizers == [.foof, .kfac, .adam, .sgd] && classify.bias)
        #expect(classify.hyperparameters(.foof) == Defaults.hyperparameters(.foof, task: .classify))
        let autoencoder = try TrainCommand.parse([]).configuration(
            source: .curves, task: .autoencoder, inputWidth: 784, classes: nil, saved: nil)
        #expect(autoencoder.widths == [784, 1000, 500, 250, 30, 250, 500, 1000, 784] && autoencoder.activation == .tanh)
        // The model's code layer is linear: 8 dense layers, 6 activations.
        let model = autoencoder.makeModel()
        #expect(model.denseLayers.count == 8 && model.layers.count == 14)
        let mirrored = try TrainCommand.parse(["--model", "784-64-8"]).configuration(
            source: .curves, task: .autoencoder, inputWidth: 784, classes: nil, saved: nil)
        #expect(mirrored.widths == [784, 64, 8, 64, 784])
    }

    @Test("Options that contradict the data or each other are refused with a message")
    func inconsistentOptions() throws {
        expectCLIError(mentioning: ["takes 100 inputs", "784"]) {
            _ = try TrainCommand.parse(["--model", "100-10"]).configuration(
                source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        }
        expectCLIError(mentioning: ["gives 7 outputs", "10 classes"]) {
            _ = try TrainCommand.parse(["--model", "784-7"]).configuration(
                source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        }
        expectCLIError(mentioning: ["weights", "at most"]) {
            _ = try TrainCommand.parse(["--model", "784-100000-100000-10"]).configuration(
                source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        }
        expectCLIError(mentioning: ["--damping", "sgd", "no damping"]) {
            _ = try TrainCommand.parse(["--damping", "sgd=1"]).configuration(
                source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        }
        expectCLIError(mentioning: ["adam", "not in --optimizers"]) {
            _ = try TrainCommand.parse(["--optimizers", "foof", "--lr", "adam=0.1"]).configuration(
                source: .fashionMNIST, task: .classify, inputWidth: 784, classes: 10, saved: nil)
        }
    }

    @Test("Parse errors: unknown options, bad values, contradictions")
    func parseErrors() throws {
        func rejects(_ arguments: [String], _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try KronfacCommand.parseAsRoot(arguments)
                Issue.record("\(arguments) should not parse", sourceLocation: sourceLocation)
            } catch {
                let message = KronfacCommand.message(for: error)
                #expect(message.contains(fragment), "\(arguments): \"\(message)\" should mention \"\(fragment)\"",
                        sourceLocation: sourceLocation)
                #expect(KronfacCommand.exitCode(for: error) != .success, sourceLocation: sourceLocation)
            }
        }
        rejects(["train", "--learning-rate", "1"], "--learning-rate")
        rejects(["train", "--steps", "0"], "--steps must be at least 1")
        rejects(["train", "--steps", "ten"], "ten")
        rejects(["train", "--steps", "5", "--epochs", "1"], "not both")
        rejects(["train", "--model", "784-x-10"], "\"x\"")
        rejects(["train", "--optimizers", "foof,newton"], "newton")
        rejects(["train", "--task", "regress"], "regress")
        rejects(["train", "--data", "imagenet"], "imagenet")
        rejects(["train", "--lr", "foof=-1"], "must be > 0")
        rejects(["train", "--resume", "a", "--checkpoint", "b"], "another directory")
        rejects(["bench", "--repeats", "0"], "--repeats")
        rejects(["bench", "--widths", "100000-100000-100000"], "weights")
        rejects(["frobnicate"], "frobnicate")
    }

    @Test("--help describes every option with its default")
    func help() throws {
        let help = TrainCommand.helpMessage(columns: 200)
        for option in ["--data", "--task", "--model", "--activation", "--optimizers", "--steps", "--epochs", "--batch-size",
                       "--lr", "--damping", "--inverse-interval", "--seed", "--threads", "--log", "--plot",
                       "--checkpoint", "--resume"] {
            #expect(help.contains(option), "help lacks \(option)")
        }
        #expect(help.contains("default: foof,kfac,adam,sgd") && help.contains("784-1000-1000-1000-10"))
        let bench = BenchCommand.helpMessage(columns: 200)
        for option in ["--widths", "--batch", "--repeats", "--threads"] { #expect(bench.contains(option)) }
    }
}
