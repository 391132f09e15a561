/// A dense, row-major array of `Float` with a shape.
///
/// The first axis is the batch (examples); layers see a tensor of shape `[n, d1, d2, ...]` as the
/// matrix `n x (d1 * d2 * ...)`. The scalars live in one contiguous Swift array, which is handed
/// to the C core in place (copy-on-write: mutation copies only when the storage is shared).
public struct Tensor: Equatable, Sendable, CustomStringConvertible {
    /// The extent of each axis.
    public private(set) var shape: [Int]
    /// The scalars in row-major order; `scalars.count` is the product of `shape`.
    public private(set) var scalars: [Float]

    /// A tensor of the given shape filled with `scalars` (row-major).
    /// - Throws: `KronfacError(.shape)` when the count does not match the shape or an extent is negative.
    public init(shape: [Int], scalars: [Float]) throws {
        guard !shape.isEmpty, shape.allSatisfy({ $0 >= 0 }) else {
            throw KronfacError(.shape, "tensor shape \(shape) must have at least one axis and no negative extent")
        }
        let count = shape.reduce(1, *)
        guard count == scalars.count else {
            throw KronfacError(.shape, "tensor shape \(shape) holds \(count) scalars, got \(scalars.count)")
        }
        self.shape = shape
        self.scalars = scalars
    }

    /// A tensor of the given shape with every scalar equal to `value`.
    public init(shape: [Int], repeating value: Float = 0) {
        precondition(!shape.isEmpty && shape.allSatisfy { $0 >= 0 }, "invalid tensor shape \(shape)")
        self.shape = shape
        self.scalars = [Float](repeating: value, count: shape.reduce(1, *))
    }

    /// A matrix from its rows, which must all have the same length.
    /// - Throws: `KronfacError(.shape)` for ragged or empty rows.
    public init(rows: [[Float]]) throws {
        guard let width = rows.first?.count, width > 0 else {
            throw KronfacError(.shape, "a matrix needs at least one row and one column")
        }
        if let bad = rows.firstIndex(where: { $0.count != width }) {
            throw KronfacError(.shape, "row \(bad) has \(rows[bad].count) columns, row 0 has \(width)")
        }
        self.shape = [rows.count, width]
        self.scalars = rows.flatMap { $0 }
    }

    /// Wraps scalars whose count is known to match (internal: no validation).
    init(uncheckedShape shape: [Int], scalars: [Float]) {
        assert(shape.reduce(1, *) == scalars.count)
        self.shape = shape
        self.scalars = scalars
    }

    /// A rows x columns matrix whose scalars are written by `body` (no zero fill first).
    static func matrix(
        rows: Int, columns: Int,
        initializingWith body: (UnsafeMutableBufferPointer<Float>) throws -> Void
    ) rethrows -> Tensor {
        let count = rows * columns
        let scalars = try [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            try body(buffer)
            initialized = count
        }
        return Tensor(uncheckedShape: [rows, columns], scalars: scalars)
    }

    /// The number of axes.
    public var rank: Int { shape.count }
    /// The total number of scalars.
    public var scalarCount: Int { scalars.count }
    /// The extent of the first axis: the number of examples in a batch.
    public var rowCount: Int { shape[0] }
    /// The number of scalars per row (the product of all axes but the first).
    public var columnCount: Int { shape.dropFirst().reduce(1, *) }

    /// The scalar at a row and column of the tensor seen as a matrix.
    public subscript(row: Int, column: Int) -> Float {
        get {
            precondition(row >= 0 && row < rowCount && column >= 0 && column < columnCount, "index out of range")
            return scalars[row * columnCount + column]
        }
        set {
            precondition(row >= 0 && row < rowCount && column >= 0 && column < columnCount, "index out of range")
            scalars[row * columnCount + column] = newValue
        }
    }

    /// The same scalars with another shape of the same total count.
    public func reshaped(to newShape: [Int]) throws -> Tensor {
        try Tensor(shape: newShape, scalars: scalars)
    }

    /// The rows (first-axis entries) at `indices`, in that order: how mini-batches are cut.
    public func gatheringRows(_ indices: some Collection<Int>) -> Tensor {
        let width = columnCount
        var newShape = shape
        newShape[0] = indices.count
        let result = scalars.withUnsafeBufferPointer { source in
            [Float](unsafeUninitializedCapacity: indices.count * width) { buffer, initialized in
                var offset = 0
                for row in indices {
                    precondition(row >= 0 && row < rowCount, "row \(row) out of range 0..<\(rowCount)")
                    let start = source.baseAddress! + row * width
                    (buffer.baseAddress! + offset).initialize(from: start, count: width)
                    offset += width
                }
                initialized = offset
            }
        }
        return Tensor(uncheckedShape: newShape, scalars: result)
    }

    /// The rows in `range`.
    public func rows(_ range: Range<Int>) -> Tensor {
        gatheringRows(range)
    }

    /// Whether every scalar is finite (no NaN, no infinity).
    public var isFinite: Bool {
        scalars.withUnsafeBufferPointer { buffer in
            for value in buffer where !value.isFinite { return false }
            return true
        }
    }

    /// Calls `body` with the scalars in place (no copy).
    public func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try scalars.withUnsafeBufferPointer(body)
    }

    /// Calls `body` with the scalars in place for writing (copied first only when shared).
    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (inout UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        try scalars.withUnsafeMutableBufferPointer(body)
    }

    public var description: String {
        let preview = scalars.prefix(8).map { "\($0)" }.joined(separator: ", ")
        return "Tensor(shape: \(shape), scalars: [\(preview)\(scalars.count > 8 ? ", ..." : "")])"
    }
}

extension Tensor {
    /// Bit-for-bit equality of shape and scalars (NaN equals NaN with the same payload), the
    /// notion checkpoints are tested with.
    public func isBitwiseEqual(to other: Tensor) -> Bool {
        shape == other.shape
            && scalars.count == other.scalars.count
            && zip(scalars, other.scalars).allSatisfy { $0.bitPattern == $1.bitPattern }
    }
}
