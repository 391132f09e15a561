import ArgumentParser
import Foundation
import Kronfac
internal import CFloatEnvironment

/// `kronfac`: the root command.
public struct KronfacCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "kronfac",
        abstract: "Kronecker-factored optimizers (FOOF, K-FAC, EKFAC) against Adam and SGD on real data.",
        discussion: "Run 'kronfac train' for the comparison (Fashion-MNIST when installed) and 'kronfac bench' for the cost of the kernels and of one step.",
        version: CoreLibrary.buildInfo,
        subcommands: [TrainCommand.self, BenchCommand.self])

    public init() {}
}

/// The process's entry point: runs a command and turns every error into one line on standard
/// error and a non-zero exit status.
public enum KronfacMain {
    /// Exit status of failures that are not usage errors (bad data, files, checkpoints).
    public static let failureStatus: Int32 = 1

    public static func main(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        exit(run(arguments))
    }

    /// Runs `arguments`; returns the exit status.
    public static func run(_ arguments: [String]) -> Int32 {
        // Subnormal floats are flushed to zero, as most training frameworks do: values of units
        // whose gradients vanish decay into subnormals, which x86 processes about a hundred times
        // slower (Adam's moments made its step four times slower within 1500 steps of the demo,
        // before the core flushed those itself).
        _ = kf_cli_flush_subnormals()
        do {
            var command = try KronfacCommand.parseAsRoot(arguments)
            try command.run()
            return 0
        } catch let error as CLIError {
            return fail(error.message, status: failureStatus)
        } catch let error as KronfacError {
            return fail(error.message, status: failureStatus)
        } catch {
            let code = KronfacCommand.exitCode(for: error)
            if code == .success {
                // --help, --version: printed by the parser.
                KronfacCommand.exit(withError: error)
            }
            let subcommand = arguments.first { ["train", "bench"].contains($0) }
            let help = subcommand.map { "kronfac \($0) --help" } ?? "kronfac --help"
            let message = KronfacCommand.message(for: error)
                .split(whereSeparator: \.isNewline).joined(separator: "; ")
            return fail("\(message) (see '\(help)')", status: code.rawValue)
        }
    }

    private static func fail(_ message: String, status: Int32) -> Int32 {
        FileHandle.standardError.write(Data("kronfac: error: \(message)\n".utf8))
        return status
    }
}
