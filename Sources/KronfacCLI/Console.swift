import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where the command line writes: reports on standard output, progress on standard error (a live
/// line redrawn in place on a terminal, plain periodic lines otherwise). Writes go straight to the
/// file descriptors, unbuffered, so the two streams interleave in order when both go to one file.
public final class Console {
    /// Whether progress is a live line (standard error is a terminal).
    public let liveProgress: Bool
    private let writeOut: (String) -> Void
    private let writeErr: (String) -> Void

    /// A console on the process's standard output and error.
    public init(liveProgress: Bool? = nil) {
        self.liveProgress = liveProgress ?? (isatty(STDERR_FILENO) != 0)
        writeOut = { FileHandle.standardOutput.write(Data($0.utf8)) }
        writeErr = { FileHandle.standardError.write(Data($0.utf8)) }
    }

    /// A console that hands its text to closures (for tests).
    public init(liveProgress: Bool, out: @escaping (String) -> Void, err: @escaping (String) -> Void) {
        self.liveProgress = liveProgress
        writeOut = out
        writeErr = err
    }

    /// A line of the report (standard output).
    public func line(_ text: String = "") { writeOut(text + "\n") }

    /// A remark about the run (standard output, part of the report).
    public func note(_ text: String) { writeOut(text + "\n") }

    /// A line on standard error.
    public func error(_ text: String) { writeErr(text + "\n") }

    func progressText(_ text: String) { writeErr(text) }

    /// The columns of the terminal on standard error (80 when unknown).
    var columns: Int {
        var size = winsize()
        if ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col >= 20 { return Int(size.ws_col) }
        return 80
    }

    public func startRun(name: String, settings: String, firstStep: Int, totalSteps: Int) -> RunProgress {
        RunProgress(console: self, name: name, settings: settings, firstStep: firstStep, totalSteps: totalSteps)
    }
}

/// The progress display of one optimizer's run.
public final class RunProgress {
    private let console: Console
    private let name: String
    private let firstStep: Int
    private let totalSteps: Int
    private let wallStart = Date()
    private var lastDraw = Date.distantPast
    private var lastRow: LogRow?
    private var step = 0
    private var batchLoss: Float?
    private var trainingSeconds = 0.0
    private var nextMilestone: Int

    init(console: Console, name: String, settings: String, firstStep: Int, totalSteps: Int) {
        self.console = console
        self.name = name
        self.firstStep = firstStep
        self.totalSteps = totalSteps
        self.step = firstStep
        nextMilestone = firstStep
        let resumed = firstStep > 0 ? ", from step \(firstStep)" : ""
        let header = "\(name) (\(settings)): \(totalSteps) steps\(resumed)"
        console.progressText(header + "\n")
    }

    /// Seconds left at the current pace (wall clock, evaluation included).
    private var eta: Double? {
        let done = step - firstStep
        guard done > 0 else { return nil }
        return Date().timeIntervalSince(wallStart) / Double(done) * Double(totalSteps - step)
    }

    /// After every training step: redraws the live line at most 10 times a second.
    func step(_ step: Int, batchLoss: Float, trainingSeconds: Double) {
        self.step = step
        self.batchLoss = batchLoss
        self.trainingSeconds = trainingSeconds
        guard console.liveProgress, Date().timeIntervalSince(lastDraw) >= 0.1 else { return }
        draw()
    }

    /// After an evaluation.
    func logged(_ row: LogRow, force: Bool) {
        lastRow = row
        step = row.step
        trainingSeconds = row.seconds
        if console.liveProgress {
            draw()
        } else if force || row.step >= nextMilestone {
            console.progressText(plainLine(row) + "\n")
            let spacing = max(1, totalSteps / 10)
            nextMilestone = (row.step / spacing + 1) * spacing
        }
    }

    func diverged(at step: Int, reason: String) {
        if console.liveProgress { console.progressText("\r\u{1B}[K") }
        console.progressText("\(name): stopped at step \(step): \(reason)\n")
    }

    func finish(_ result: RunResult) {
        if console.liveProgress {
            draw(final: true)
            console.progressText("\n")
        }
    }

    private func draw(final: Bool = false) {
        lastDraw = Date()
        let percent = totalSteps > 0 ? 100 * step / totalSteps : 100
        var text = "\(pad(name, 6)) \(step)/\(totalSteps) \(percent)%"
        if let batchLoss { text += "  batch loss \(formatLoss(batchLoss))" }
        if let row = lastRow {
            text += "  train \(formatLoss(row.trainLoss))  test \(formatLoss(row.testLoss))"
            if let accuracy = row.testAccuracy { text += " \(String(format: "%.1f%%", 100 * accuracy))" }
        }
        text += "  \(formatDuration(trainingSeconds))"
        if !final, let eta { text += "  ETA \(formatDuration(eta))" }
        let width = console.columns - 1
        if text.count > width { text = String(text.prefix(width)) }
        console.progressText("\r\u{1B}[K" + text)
    }

    private func plainLine(_ row: LogRow) -> String {
        var text = "\(name) step \(row.step)/\(totalSteps): train loss \(formatLoss(row.trainLoss)), "
            + "test loss \(formatLoss(row.testLoss))"
        if let accuracy = row.testAccuracy { text += ", test accuracy \(String(format: "%.4f", accuracy))" }
        text += "; \(String(format: "%.1f", row.seconds)) s training"
        if row.step < totalSteps, let eta { text += ", ETA \(formatDuration(eta))" }
        return text
    }
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}

func padLeft(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

/// Four significant digits, scientific below 1e-3.
func formatLoss(_ value: Float) -> String {
    guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
    if value != 0 && abs(value) < 1e-3 { return String(format: "%.3e", Double(value)) }
    return String(format: "%.4g", Double(value))
}

/// "42s", "3m05s", "1h02m".
func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "?" }
    let s = Int(seconds.rounded())
    if s < 60 { return "\(s)s" }
    if s < 3600 { return String(format: "%dm%02ds", s / 60, s % 60) }
    return String(format: "%dh%02dm", s / 3600, (s % 3600) / 60)
}
