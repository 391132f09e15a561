import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import KronfacCLI

/// `kronfac` run as a separate process on a tiny generated IDX data set.
@Suite("kronfac end to end")
struct EndToEndTests {
    static let model = "36-12-10"

    /// Common arguments: the tiny data, a small model, a few steps with short intervals so that
    /// refreshes and statistics steps happen.
    func arguments(_ dir: URL, steps: Int, extra: [String] = []) -> [String] {
        ["train", "--data", "idx:\(dir.path)", "--model", Self.model, "--steps", "\(steps)", "--batch-size", "10",
         "--optimizers", "foof,kfac,adam,sgd", "--inverse-interval", "3", "--stats-subsample", "0",
         "--log-every", "2", "--eval-examples", "20"] + extra
    }

    @Test("A run writes the log, the plot and the table, and exits 0")
    func train() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try TinyIDX.write(to: dir)
        let log = dir.appendingPathComponent("out/run.csv"), plot = dir.appendingPathComponent("out/run.svg")
        let run = try runTool(arguments(dir, steps: 6, extra: ["--log", log.path, "--plot", plot.path]))
        #expect(run.status == 0, "stderr: \(run.stderr)")
        let (header, rows) = try parseLog(log)
        #expect(header == ["optimizer", "step", "seconds", "train_loss", "test_loss", "test_accuracy"])
        // Steps 0, 2, 4, 6 for each optimizer, in the order asked for.
        #expect(rows.count == 16)
        #expect(rows.map { $0[0] } == ["foof", "kfac", "adam", "sgd"].flatMap { Array(repeating: $0, count: 4) })
        #expect(rows.map { $0[1] } == Array(repeating: ["0", "2", "4", "6"], count: 4).flatMap { $0 })
        for row in rows {
            #expect(row.count == 6)
            let seconds = Double(row[2])!, train = Float(row[3])!, test = Float(row[4])!, accuracy = Float(row[5])!
            #expect(seconds >= 0 && train.isFinite && test.isFinite && accuracy >= 0 && accuracy <= 1)
        }
        // Training time only grows; every optimizer starts from the same weights.
        for k in 0..<4 {
            let times = rows[(4 * k)..<(4 * k + 4)].map { Double($0[2])! }
            #expect(times == times.sorted())
            #expect(rows[4 * k][3] == rows[0][3])
        }
        // Training lowers the training loss.
        for k in 0..<4 { #expect(Float(rows[4 * k + 3][3])! < Float(rows[4 * k][3])!) }
        let svg = try Data(contentsOf: plot)
        let parser = XMLParser(data: svg)
        #expect(parser.parse())
        let text = String(decoding: svg, as: UTF8.self)
        for kind in ["foof", "kfac", "adam", "sgd"] { #expect(text.contains("id=\"series-\(kind)-steps\"")) }
        // The table: one line per optimizer, and where the outputs are.
        for name in ["FOOF", "K-FAC", "Adam", "SGD"] {
            #expect(run.stdout.split(separator: "\n").contains { $0.hasPrefix(name + " ") }, "no row for \(name)")
        }
        #expect(run.stdout.contains("log: \(log.path)") && run.stdout.contains("plot: \(plot.path)"))
        #expect(run.stdout.contains("held out") == false && run.stdout.contains("80 training"))
    }

    @Test("--resume continues bit-exactly: checkpoints and logged losses equal an uninterrupted run")
    func resume() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try TinyIDX.write(to: dir)
        let straight = dir.appendingPathComponent("straight"), split = dir.appendingPathComponent("split")
        let a = try runTool(arguments(dir, steps: 9, extra: ["--checkpoint", straight.path, "--checkpoint-every", "4",
                                                             "--log", dir.appendingPathComponent("a.csv").path]))
        #expect(a.status == 0, "stderr: \(a.stderr)")
        // Interrupted after 5 steps (between checkpoints and logs), then resumed to 9.
        let b1 = try runTool(arguments(dir, steps: 5, extra: ["--checkpoint", split.path, "--checkpoint-every", "4",
                                                              "--log", dir.appendingPathComponent("b.csv").path]))
        #expect(b1.status == 0, "stderr: \(b1.stderr)")
        let b2 = try runTool(["train", "--resume", split.path, "--steps", "9"])
        #expect(b2.status == 0, "stderr: \(b2.stderr)")
        #expect(b2.stdout.contains("resuming at step 5 of 9"))
        for kind in ["foof", "kfac", "adam", "sgd"] {
            let x = try Data(contentsOf: straight.appendingPathComponent("\(kind).kftrain"))
            let y = try Data(contentsOf: split.appendingPathComponent("\(kind).kftrain"))
            #expect(x == y, "\(kind): the resumed checkpoint differs from the uninterrupted one")
        }
        // The resumed run rewrote its log (the path saved in the directory) with every row.
        let (_, straightRows) = try parseLog(dir.appendingPathComponent("a.csv"))
        let (_, resumedRows) = try parseLog(dir.appendingPathComponent("b.csv"))
        func losses(_ rows: [[String]]) -> [[String]] { rows.map { [$0[0], $0[1], $0[3], $0[4], $0[5]] } }
        // The interrupted run also logged its last step, 5.
        #expect(losses(resumedRows).filter { $0[1] != "5" } == losses(straightRows))
        #expect(resumedRows.count == straightRows.count + 4)
        // Resuming a finished run trains nothing more.
        let again = try runTool(["train", "--resume", split.path])
        #expect(again.status == 0 && again.stdout.contains("nothing left to train"))
    }

    @Test("Bad input: one error line on stderr, a non-zero exit, never a crash",
          arguments: ["unknown option", "malformed widths", "missing data", "truncated", "wrong magic", "broken gzip",
                      "resume from another model", "resume from nothing", "distributed without MPI"])
    func badInput(_ name: String) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try TinyIDX.write(to: dir, training: 30, test: nil)
        let images = dir.appendingPathComponent("train-images-idx3-ubyte")
        let good = try Data(contentsOf: images)
        var args = arguments(dir, steps: 2)
        var expected = ""
        switch name {
        case "unknown option":
            args.append("--learning-rate=3")
            expected = "--learning-rate"
        case "malformed widths":
            args += ["--model", "36-twelve-10"]
            expected = "twelve"
        case "missing data":
            args[2] = "idx:\(dir.appendingPathComponent("absent").path)"
            expected = "not a directory"
        case "truncated":
            try good.prefix(good.count / 2).write(to: images)
            expected = "truncated"
        case "wrong magic":
            try (Data([9, 9, 9, 9]) + good.dropFirst(4)).write(to: images)
            expected = "magic"
        case "broken gzip":
            try Data([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3] + [UInt8](repeating: 0xEE, count: 64)).write(to: images)
            expected = "gzip"
        case "resume from another model":
            let checkpoint = dir.appendingPathComponent("ck").path
            let first = try runTool(arguments(dir, steps: 2, extra: ["--checkpoint", checkpoint]))
            #expect(first.status == 0, "stderr: \(first.stderr)")
            args = ["train", "--resume", checkpoint, "--model", "36-20-10"]
            expected = "36-12-10"
        case "distributed without MPI":
            // The default build has no MPI: the option says how to get it (scripts/test_mpi runs
            // the MPI build itself).
            guard !DistributedTraining.isAvailable else { return }
            args.append("--distributed")
            expected = "--traits MPI"
        default:
            args = ["train", "--resume", dir.appendingPathComponent("nothing").path]
            expected = "no such directory"
        }
        let run = try runTool(args)
        #expect(run.status != 0, "\(name): exit status 0")
        #expect(run.errorLines.count == 1, "\(name): stderr was \(run.stderr)")
        let line = run.errorLines.first ?? ""
        #expect(line.hasPrefix("kronfac: error: "), "\(name): \(line)")
        #expect(line.contains(expected), "\(name): \"\(line)\" should mention \"\(expected)\"")
        #expect(!run.stderr.contains("Fatal error") && !run.stderr.contains("Stack dump"))
    }

    @Test("--help exits 0 and lists the subcommands' options")
    func help() throws {
        let run = try runTool(["train", "--help"])
        #expect(run.status == 0)
        #expect(run.stdout.contains("--inverse-interval") && run.stdout.contains("--resume"))
        let root = try runTool(["--help"])
        #expect(root.status == 0 && root.stdout.contains("train") && root.stdout.contains("bench"))
    }
}
