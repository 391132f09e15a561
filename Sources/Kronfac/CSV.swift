import Foundation

/// A reader of numeric CSV files: one example per line, the same number of fields on every line,
/// an optional header line of column names.
public enum CSV {
    /// The numbers of a CSV file as a `[rows, columns]` tensor, and the header if there is one.
    ///
    /// - Parameters:
    ///   - separator: the field separator.
    ///   - hasHeader: whether the first line names the columns; nil detects it (a first line with
    ///     a field that is not a number is a header).
    /// - Throws: `.io` when the file cannot be read; `.format` naming the line and column of a
    ///   field that is not a finite number or a line with the wrong number of fields; `.shape` for
    ///   a file without data lines.
    public static func read(
        _ path: String, separator: Character = ",", hasHeader: Bool? = nil
    ) throws -> (header: [String]?, values: Tensor) {
        let text: String
        do {
            text = try String(contentsOf: URL(fileURLWithPath: path), encoding: .utf8)
        } catch {
            throw KronfacError(.io, "cannot read \(path): \(error.localizedDescription)")
        }
        return try parse(text, name: path, separator: separator, hasHeader: hasHeader)
    }

    /// Parses CSV text; see `read(_:separator:hasHeader:)`. `name` appears in error messages.
    public static func parse(
        _ text: String, name: String = "CSV", separator: Character = ",", hasHeader: Bool? = nil
    ) throws -> (header: [String]?, values: Tensor) {
        var lines: [(number: Int, fields: [String])] = []
        var number = 0
        // "\r\n" is one Character in Swift, so split on every kind of newline.
        for line in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            number += 1
            let trimmed = line
            if trimmed.allSatisfy(\.isWhitespace) { continue }
            let fields = trimmed.split(separator: separator, omittingEmptySubsequences: false).map { field -> String in
                var f = field.trimmingCharacters(in: .whitespaces)
                if f.count >= 2, f.hasPrefix("\""), f.hasSuffix("\"") { f = String(f.dropFirst().dropLast()) }
                return f
            }
            lines.append((number, fields))
        }
        guard let first = lines.first else { throw KronfacError(.shape, "\(name) has no data lines") }
        let header = hasHeader ?? first.fields.contains { Float($0) == nil }
        let dataLines = header ? lines.dropFirst() : lines[...]
        guard !dataLines.isEmpty else { throw KronfacError(.shape, "\(name) has a header but no data lines") }
        let width = first.fields.count
        var scalars: [Float] = []
        scalars.reserveCapacity(dataLines.count * width)
        for line in dataLines {
            guard line.fields.count == width else {
                throw KronfacError(.format, "\(name) line \(line.number): \(line.fields.count) fields, expected \(width)")
            }
            for (column, field) in line.fields.enumerated() {
                guard let value = Float(field), value.isFinite else {
                    throw KronfacError(.format,
                        "\(name) line \(line.number) column \(column + 1): \"\(field)\" is not a finite number")
                }
                scalars.append(value)
            }
        }
        let values = try Tensor(shape: [dataLines.count, width], scalars: scalars)
        return (header ? first.fields : nil, values)
    }

    /// A data set from a CSV file: the target columns (default: the last) and the others as inputs.
    ///
    /// - Parameters:
    ///   - targetColumns: zero-based columns of the targets.
    ///   - classes: with one target column of integer class labels 0..<classes, the targets become
    ///     one-hot rows.
    public static func dataset(
        _ path: String, targetColumns: [Int]? = nil, classes: Int? = nil,
        separator: Character = ",", hasHeader: Bool? = nil
    ) throws -> Dataset {
        let (_, values) = try read(path, separator: separator, hasHeader: hasHeader)
        return try dataset(values, targetColumns: targetColumns, classes: classes, name: path)
    }

    static func dataset(_ values: Tensor, targetColumns: [Int]?, classes: Int?, name: String) throws -> Dataset {
        let width = values.columnCount
        let targets = targetColumns ?? [width - 1]
        guard !targets.isEmpty, Set(targets).count == targets.count,
              targets.allSatisfy({ $0 >= 0 && $0 < width }) else {
            throw KronfacError(.invalidArgument, "\(name): target columns \(targets) must be distinct and within 0..<\(width)")
        }
        let inputs = (0..<width).filter { !targets.contains($0) }
        guard !inputs.isEmpty else { throw KronfacError(.invalidArgument, "\(name): no input columns left") }
        let rows = values.rowCount
        func columns(_ selected: [Int]) -> [Float] {
            var result: [Float] = []
            result.reserveCapacity(rows * selected.count)
            for r in 0..<rows { for c in selected { result.append(values[r, c]) } }
            return result
        }
        let x = try Tensor(shape: [rows, inputs.count], scalars: columns(inputs))
        if let classes {
            guard targets.count == 1 else {
                throw KronfacError(.invalidArgument, "\(name): class labels need exactly one target column")
            }
            var labels: [Int] = []
            for r in 0..<rows {
                let v = values[r, targets[0]]
                guard v == v.rounded(), v >= 0, v < Float(classes) else {
                    throw KronfacError(.format, "\(name) data row \(r + 1): class label \(v) is not an integer in 0..<\(classes)")
                }
                labels.append(Int(v))
            }
            return try Dataset(inputs: x, targets: Dataset.oneHot(labels, classes: classes))
        }
        return try Dataset(inputs: x, targets: Tensor(shape: [rows, targets.count], scalars: columns(targets)))
    }
}
