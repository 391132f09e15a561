import Foundation

/// The `--plot` picture: training loss against steps (left) and against training seconds
/// (right), log scale, one line per optimizer, a standalone SVG 1.1 file.
public enum SVGPlot {
    static let width = 980.0, height = 470.0
    static let top = 58.0, bottom = 378.0
    static let panels: [(left: Double, right: Double)] = [(78, 458), (568, 948)]

    public static func color(_ kind: OptimizerKind) -> String {
        switch kind {
        case .foof: return "#d62728"
        case .kfac: return "#1f77b4"
        case .ekfac: return "#9467bd"
        case .adam: return "#2ca02c"
        case .sgd: return "#7f7f7f"
        }
    }

    public static func render(_ results: [RunResult], title: String) -> String {
        var svg: [String] = []
        svg.append("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        svg.append("<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
            + "viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"13\">")
        svg.append("<rect x=\"0\" y=\"0\" width=\"\(Int(width))\" height=\"\(Int(height))\" fill=\"white\"/>")
        svg.append(text(width / 2, 26, "Training loss: \(title)", anchor: "middle", size: 16, weight: "bold"))

        let points = results.map { result in
            result.rows.filter { $0.trainLoss.isFinite && $0.trainLoss > 0 }
        }
        let losses = points.flatMap { $0.map { Double($0.trainLoss) } }
        let (yLow, yHigh) = logRange(losses)
        let maxStep = Double(points.flatMap { $0.map(\.step) }.max() ?? 1)
        let maxSeconds = points.flatMap { $0.map(\.seconds) }.max() ?? 1

        for (panel, (left, right)) in panels.enumerated() {
            let bySteps = panel == 0
            let xHigh = max(bySteps ? maxStep : maxSeconds, bySteps ? 1 : 1e-3)
            func x(_ value: Double) -> Double { left + (right - left) * value / xHigh }
            func y(_ value: Double) -> Double {
                bottom - (bottom - top) * (log10(value) - log10(yLow)) / (log10(yHigh) - log10(yLow))
            }
            svg.append("<g class=\"panel\" id=\"panel-\(bySteps ? "steps" : "seconds")\">")
            // Grid and ticks.
            for tick in logTicks(yLow, yHigh) {
                let ty = y(tick.value)
                svg.append(line(left, ty, right, ty, stroke: tick.major ? "#d0d0d0" : "#ececec"))
                if tick.labelled {
                    svg.append(text(left - 6, ty + 4, tickLabel(tick.value), anchor: "end", size: 11))
                }
            }
            for tick in linearTicks(xHigh) {
                let tx = x(tick)
                svg.append(line(tx, top, tx, bottom, stroke: "#ececec"))
                svg.append(text(tx, bottom + 17, linearLabel(tick), anchor: "middle", size: 11))
            }
            svg.append("<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(right - left))\" height=\"\(f(bottom - top))\" "
                + "fill=\"none\" stroke=\"#333333\"/>")
            svg.append(text((left + right) / 2, bottom + 38, bySteps ? "steps" : "training time (s)", anchor: "middle"))
            let midY = (top + bottom) / 2
            svg.append("<text x=\"\(f(left - 52))\" y=\"\(f(midY))\" text-anchor=\"middle\" transform=\"rotate(-90 \(f(left - 52)) \(f(midY)))\">"
                + "training loss (log scale)</text>")
            // One line per optimizer.
            for (result, rows) in zip(results, points) where !rows.isEmpty {
                let coordinates = rows.map { row in
                    "\(f(x(bySteps ? Double(row.step) : row.seconds))),\(f(y(Double(row.trainLoss))))"
                }.joined(separator: " ")
                svg.append("<polyline class=\"series\" id=\"series-\(result.kind.rawValue)-\(bySteps ? "steps" : "seconds")\" "
                    + "data-optimizer=\"\(result.kind.rawValue)\" fill=\"none\" stroke=\"\(color(result.kind))\" "
                    + "stroke-width=\"2\" stroke-linejoin=\"round\" points=\"\(coordinates)\"/>")
            }
            svg.append("</g>")
        }
        // Legend below the panels.
        svg.append("<g class=\"legend\">")
        let entryWidth = 150.0
        var lx = width / 2 - entryWidth * Double(results.count) / 2
        for result in results {
            let ly = height - 34
            svg.append(line(lx, ly, lx + 28, ly, stroke: color(result.kind), width: 3))
            var label = result.kind.displayName
            if result.divergedAt != nil { label += " (diverged)" }
            svg.append(text(lx + 35, ly + 4, label, anchor: "start"))
            lx += entryWidth
        }
        svg.append("</g>")
        svg.append("</svg>")
        return svg.joined(separator: "\n") + "\n"
    }

    /// Decades around the values (at least one decade), padded.
    static func logRange(_ values: [Double]) -> (Double, Double) {
        guard let low = values.min(), let high = values.max() else { return (0.1, 10) }
        var lo = pow(10, floor(log10(low)))
        var hi = pow(10, ceil(log10(high)))
        if hi <= lo { hi = lo * 10 }
        // Tighten to 1-2-5 steps inside the decades so that the lines fill the panel.
        for m in [5.0, 2.0] where lo * m <= low { lo *= m; break }
        for m in [0.2, 0.5] where hi * m >= high { hi *= m; break }
        return (lo, hi)
    }

    struct Tick { var value: Double; var major: Bool; var labelled: Bool }

    /// Decades are labelled; inside them 2 and 5 are drawn, labelled when the range is short.
    static func logTicks(_ low: Double, _ high: Double) -> [Tick] {
        var ticks: [Tick] = []
        let decades = log10(high / low)
        var decade = pow(10, floor(log10(low)))
        while decade <= high * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m
                if v >= low * 0.9999 && v <= high * 1.0001 {
                    ticks.append(Tick(value: v, major: m == 1, labelled: m == 1 || decades <= 2.5))
                }
            }
            decade *= 10
        }
        return ticks
    }

    /// 0 and round steps of 1, 2 or 5 times a power of ten, about five of them.
    static func linearTicks(_ high: Double) -> [Double] {
        guard high > 0 else { return [0] }
        let raw = high / 5
        let power = pow(10, floor(log10(raw)))
        let step = [1.0, 2.0, 5.0, 10.0].map { $0 * power }.first { $0 >= raw } ?? raw
        return stride(from: 0.0, through: high * 1.0001, by: step).map { $0 }
    }

    static func tickLabel(_ value: Double) -> String {
        let exponent = Int(floor(log10(value) + 1e-9))
        if exponent >= -2 && exponent <= 3 { return String(format: "%g", value) }
        let mantissa = Int((value / pow(10, Double(exponent))).rounded())
        return mantissa == 1 ? "1e\(exponent)" : "\(mantissa)e\(exponent)"
    }

    static func linearLabel(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(format: "%g", value)
    }

    static func f(_ value: Double) -> String { String(format: "%.1f", value) }

    static func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, stroke: String, width: Double = 1) -> String {
        "<line x1=\"\(f(x1))\" y1=\"\(f(y1))\" x2=\"\(f(x2))\" y2=\"\(f(y2))\" stroke=\"\(stroke)\" stroke-width=\"\(f(width))\"/>"
    }

    static func text(_ x: Double, _ y: Double, _ content: String, anchor: String, size: Int = 13, weight: String = "normal") -> String {
        "<text x=\"\(f(x))\" y=\"\(f(y))\" text-anchor=\"\(anchor)\" font-size=\"\(size)\" font-weight=\"\(weight)\">\(escape(content))</text>"
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
