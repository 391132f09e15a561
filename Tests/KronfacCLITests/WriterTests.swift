import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import KronfacCLI

/// Collects the elements of an XML document.
private final class ElementCollector: NSObject, XMLParserDelegate {
    var elements: [(name: String, attributes: [String: String])] = []
    var texts: [String] = []
    private var current = ""

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        elements.append((name, attributes))
        current = ""
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) { current += string }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text" { texts.append(current) }
        current = ""
    }
}

private func parseXML(_ text: String) -> (ok: Bool, collector: ElementCollector, error: String) {
    let parser = XMLParser(data: Data(text.utf8))
    let collector = ElementCollector()
    parser.delegate = collector
    let ok = parser.parse()
    return (ok, collector, parser.parserError.map { "\($0)" } ?? "")
}

/// Two runs with losses falling by decades, and SGD, which stalls.
private func sampleResults() -> [RunResult] {
    var foof = RunResult(kind: .foof)
    foof.rows = [LogRow(step: 0, seconds: 0, trainLoss: 2.3, testLoss: 2.3, testAccuracy: 0.1),
                 LogRow(step: 10, seconds: 1.5, trainLoss: 0.2, testLoss: 0.4, testAccuracy: 0.8),
                 LogRow(step: 20, seconds: 3.0, trainLoss: 0.004, testLoss: 0.35, testAccuracy: 0.9)]
    foof.steps = 20
    foof.trainingSeconds = 3.0
    foof.finalTestLoss = 0.36
    foof.finalTestAccuracy = 0.895
    var sgd = RunResult(kind: .sgd)
    sgd.rows = [LogRow(step: 0, seconds: 0, trainLoss: 2.3, testLoss: 2.3, testAccuracy: 0.1),
                LogRow(step: 10, seconds: 1.0, trainLoss: 0.9, testLoss: 0.95, testAccuracy: 0.6),
                LogRow(step: 20, seconds: 2.0, trainLoss: 0.5, testLoss: 0.6, testAccuracy: 0.75)]
    sgd.steps = 20
    sgd.trainingSeconds = 2.0
    sgd.finalTestLoss = 0.61
    sgd.finalTestAccuracy = 0.74
    return [foof, sgd]
}

@Suite("CSV log, SVG plot and table")
struct WriterTests {
    @Test("The CSV log has the documented header and one row per logged step, read back exactly")
    func csvLog() throws {
        let results = sampleResults()
        let text = CSVLog.render(results, classify: true)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0] == "optimizer,step,seconds,train_loss,test_loss,test_accuracy")
        #expect(lines.count == 1 + 6)
        let fields = lines[3].split(separator: ",").map(String.init)
        #expect(fields[0] == "foof" && fields[1] == "20" && fields[2] == "3.000")
        #expect(Float(fields[3]) == 0.004 && Float(fields[4]) == 0.35 && Float(fields[5]) == 0.9)
        #expect(lines[4].hasPrefix("sgd,0,"))
        // An autoencoder has no accuracy column.
        let plain = CSVLog.render(results, classify: false).split(separator: "\n")
        #expect(plain[0] == "optimizer,step,seconds,train_loss,test_loss" && plain[1].split(separator: ",").count == 5)
    }

    @Test("The SVG is well-formed XML with both panels, labelled axes, a legend and every series")
    func svgPlot() throws {
        let results = sampleResults()
        let svg = SVGPlot.render(results, title: "idx:<dir> & more")
        let (ok, collector, error) = parseXML(svg)
        #expect(ok, "SVG does not parse: \(error)")
        #expect(collector.elements.first?.name == "svg")
        #expect(collector.elements.first?.attributes["xmlns"] == "http://www.w3.org/2000/svg")
        let lines = collector.elements.filter { $0.name == "polyline" }
        #expect(lines.count == 4)
        for kind in ["foof", "sgd"] {
            for panel in ["steps", "seconds"] {
                let series = lines.first { $0.attributes["id"] == "series-\(kind)-\(panel)" }
                #expect(series != nil, "missing series \(kind) \(panel)")
                let points = series?.attributes["points"]?.split(separator: " ") ?? []
                #expect(points.count == 3)
                // Every coordinate lies inside the drawing.
                for point in points {
                    let xy = point.split(separator: ",").compactMap { Double($0) }
                    #expect(xy.count == 2 && xy[0] >= 0 && xy[0] <= SVGPlot.width && xy[1] >= 0 && xy[1] <= SVGPlot.height)
                }
            }
        }
        // The loss falls, so on a log axis (y grows downwards) the last point is lowest.
        let foof = lines.first { $0.attributes["id"] == "series-foof-steps" }!.attributes["points"]!
        let ys = foof.split(separator: " ").map { Double($0.split(separator: ",")[1])! }
        #expect(ys[0] < ys[1] && ys[1] < ys[2])
        // Labels: axes, legend, decades; the title's special characters survive escaping.
        for label in ["steps", "training time (s)", "training loss (log scale)", "FOOF", "SGD", "0.01", "0.1", "1"] {
            #expect(collector.texts.contains(label), "no text \"\(label)\" in \(collector.texts)")
        }
        #expect(collector.texts.contains { $0.contains("idx:<dir> & more") })
    }

    @Test("Non-finite losses leave gaps, not broken coordinates; an empty plot still parses")
    func svgEdgeCases() throws {
        var results = sampleResults()
        results[1].rows[2].trainLoss = .nan
        results[1].divergedAt = 20
        let (ok, collector, _) = parseXML(SVGPlot.render(results, title: "t"))
        #expect(ok)
        let sgd = collector.elements.first { $0.attributes["id"] == "series-sgd-steps" }!
        #expect(sgd.attributes["points"]!.split(separator: " ").count == 2)
        #expect(!sgd.attributes["points"]!.contains("nan"))
        #expect(collector.texts.contains("SGD (diverged)"))
        #expect(parseXML(SVGPlot.render([], title: "nothing")).ok)
        #expect(parseXML(SVGPlot.render([RunResult(kind: .adam)], title: "no rows")).ok)
    }

    @Test("Log-axis ticks cover the range and are labelled")
    func ticks() {
        let (low, high) = SVGPlot.logRange([0.004, 2.3])
        #expect(low <= 0.004 && high >= 2.3 && low > 0.0009 && high <= 10)
        let ticks = SVGPlot.logTicks(low, high)
        #expect(ticks.filter(\.major).map(\.value).map { ($0 * 1e6).rounded() / 1e6 } == [0.01, 0.1, 1])
        #expect(SVGPlot.tickLabel(0.001) == "1e-3" && SVGPlot.tickLabel(0.1) == "0.1" && SVGPlot.tickLabel(2e-4) == "2e-4")
        #expect(SVGPlot.linearTicks(6000) == [0, 2000, 4000, 6000] && SVGPlot.linearTicks(9.3) == [0, 2, 4, 6, 8])
    }

    @Test("The table reports the common target: the best loss every optimizer reached, and when")
    func table() throws {
        let results = sampleResults()
        #expect(commonTarget(results) == 0.5)
        #expect(results[0].firstRow(reaching: 0.5)?.step == 10)
        let lines = ResultsTable.render(results, classify: true, trainingExamples: 1000, testExamples: 10000)
        #expect(lines[0].contains("optimizer") && lines[0].contains("test acc") && lines[0].contains("steps to 0.5"))
        let foof = lines.first { $0.hasPrefix("FOOF") }!.split(separator: " ").map(String.init)
        // FOOF: last train loss, test loss, accuracy, s/step, vs SGD, steps and seconds to 0.5.
        #expect(foof == ["FOOF", "0.004", "0.36", "89.50%", "150", "1.50x", "10", "1.5"])
        let sgd = lines.first { $0.hasPrefix("SGD") }!.split(separator: " ").map(String.init)
        #expect(sgd == ["SGD", "0.5", "0.61", "74.00%", "100", "1.00x", "20", "2.0"])
        #expect(lines.last!.contains("1000 fixed training examples") && lines.last!.contains("10000 test examples"))
        // A run that diverged early does not set the bar for the others.
        var diverged = RunResult(kind: .adam)
        diverged.rows = [LogRow(step: 0, seconds: 0, trainLoss: 2.3, testLoss: 2.3)]
        diverged.divergedAt = 3
        #expect(commonTarget(results + [diverged]) == 0.5)
        let withDiverged = ResultsTable.render(results + [diverged], classify: true, trainingExamples: 1000, testExamples: 10000)
        let row = withDiverged.first { $0.hasPrefix("Adam (diverged)") }?.split(separator: " ") ?? []
        #expect(row.suffix(2) == ["-", "-"] && row.contains("2.3"))
    }
}
