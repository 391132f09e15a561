import Foundation

/// The `--log` file: one row per logged step of every run.
public enum CSVLog {
    public static func header(classify: Bool) -> String {
        "optimizer,step,seconds,train_loss,test_loss" + (classify ? ",test_accuracy" : "")
    }

    /// The whole file. Losses are written with the shortest decimal that reads back as the same
    /// float, seconds to the millisecond.
    public static func render(_ results: [RunResult], classify: Bool) -> String {
        var lines = [header(classify: classify)]
        for result in results {
            for row in result.rows {
                var fields = [result.kind.rawValue, "\(row.step)", String(format: "%.3f", row.seconds),
                              number(row.trainLoss), number(row.testLoss)]
                if classify { fields.append(row.testAccuracy.map(number) ?? "") }
                lines.append(fields.joined(separator: ","))
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func number(_ value: Float) -> String {
        guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
        return "\(value)"
    }
}

/// Milliseconds with three significant digits ("45.3", "0.0312").
func formatMilliseconds(_ seconds: Double) -> String {
    let ms = seconds * 1000
    if ms >= 100 { return String(format: "%.0f", ms) }
    return String(format: "%.3g", ms)
}

/// The final table: one line per optimizer.
public enum ResultsTable {
    /// The table's lines (no trailing newline).
    /// - Parameters:
    ///   - trainingExamples: the size of the fixed training subset the training loss is measured on.
    ///   - testExamples: the size of the test set of the final test columns.
    public static func render(_ results: [RunResult], classify: Bool, trainingExamples: Int, testExamples: Int) -> [String] {
        let target = commonTarget(results)
        let sgd = results.first { $0.kind == .sgd }?.secondsPerStep
        var header = ["optimizer", "train loss", "test loss"]
        if classify { header.append("test acc") }
        header += ["ms/step"]
        if sgd != nil { header.append("vs SGD") }
        let targetText = target.map(formatLoss) ?? "-"
        header += ["steps to \(targetText)", "seconds to \(targetText)"]

        var rows: [[String]] = []
        for result in results {
            let last = result.rows.last
            var row = [result.kind.displayName + (result.divergedAt != nil ? " (diverged)" : "")]
            row.append(last.map { formatLoss($0.trainLoss) } ?? "-")
            row.append(result.finalTestLoss.map(formatLoss) ?? "-")
            if classify { row.append(result.finalTestAccuracy.map { String(format: "%.2f%%", 100 * $0) } ?? "-") }
            let perStep = result.secondsPerStep
            row.append(perStep.map { formatMilliseconds($0) } ?? "-")
            if let sgd {
                row.append(perStep.map { String(format: "%.2fx", $0 / sgd) } ?? "-")
            }
            if let target, let reached = result.firstRow(reaching: target) {
                row.append("\(reached.step)")
                row.append(String(format: "%.1f", reached.seconds))
            } else {
                row += ["-", "-"]
            }
            rows.append(row)
        }
        let widths = header.indices.map { column in
            ([header[column]] + rows.map { $0[column] }).map(\.count).max()!
        }
        func format(_ cells: [String]) -> String {
            cells.enumerated().map { column, cell in
                column == 0 ? pad(cell, widths[column]) : padLeft(cell, widths[column])
            }.joined(separator: "  ")
        }
        var lines = [format(header), format(widths.map { String(repeating: "-", count: $0) })]
        lines += rows.map(format)
        var notes = "train loss: on \(trainingExamples) fixed training examples; test: all \(testExamples) test examples"
        if let target {
            notes += "; steps and seconds (training only) to the best training loss every optimizer reached, \(formatLoss(target))"
        }
        lines.append(notes)
        return lines
    }
}
