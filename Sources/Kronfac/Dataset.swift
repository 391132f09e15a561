/// Examples for training or evaluation: inputs and targets with one row per example.
public struct Dataset: Sendable {
    /// `[count, ...]`: one row per example.
    public let inputs: Tensor
    /// `[count, ...]`: one row per example (one-hot rows for classes, the inputs for autoencoders).
    public let targets: Tensor

    /// - Throws: `KronfacError(.shape)` when the counts of examples differ or there are none.
    public init(inputs: Tensor, targets: Tensor) throws {
        guard inputs.rank >= 1, inputs.rowCount > 0 else {
            throw KronfacError(.shape, "a data set needs at least one example (inputs have shape \(inputs.shape))")
        }
        guard targets.rank >= 1, targets.rowCount == inputs.rowCount else {
            throw KronfacError(.shape,
                "inputs hold \(inputs.rowCount) examples but targets hold \(targets.rank >= 1 ? targets.rowCount : 0)")
        }
        self.inputs = inputs
        self.targets = targets
    }

    /// The number of examples.
    public var count: Int { inputs.rowCount }

    /// The examples at `indices`, in that order.
    public func subset(_ indices: some Collection<Int>) throws -> Dataset {
        guard let bad = indices.first(where: { $0 < 0 || $0 >= count }) else {
            return try Dataset(inputs: inputs.gatheringRows(indices), targets: targets.gatheringRows(indices))
        }
        throw KronfacError(.invalidArgument, "example index \(bad) is out of range 0..<\(count)")
    }

    /// The first `trainingCount` examples and the rest, after a seeded shuffle (no shuffle
    /// when `seed` is nil).
    public func split(trainingCount: Int, seed: UInt64? = nil) throws -> (training: Dataset, test: Dataset) {
        guard trainingCount > 0, trainingCount < count else {
            throw KronfacError(.invalidArgument,
                "trainingCount = \(trainingCount) must leave examples on both sides of 0..<\(count)")
        }
        var order = Array(0..<count)
        if let seed {
            var generator = SeededGenerator(seed: seed, stream: 0x53_706C_6974)  // "Split"
            order = generator.permutation(of: count)
        }
        return (try subset(order[..<trainingCount]), try subset(order[trainingCount...]))
    }

    /// One-hot rows `[labels.count, classes]` for integer class labels.
    /// - Throws: `.invalidArgument` for a label outside 0..<classes.
    public static func oneHot(_ labels: [Int], classes: Int) throws -> Tensor {
        guard classes > 0 else { throw KronfacError(.invalidArgument, "classes = \(classes) must be >= 1") }
        var scalars = [Float](repeating: 0, count: labels.count * classes)
        for (row, label) in labels.enumerated() {
            guard label >= 0 && label < classes else {
                throw KronfacError(.invalidArgument, "label \(label) of example \(row) is outside 0..<\(classes)")
            }
            scalars[row * classes + label] = 1
        }
        return try Tensor(shape: [labels.count, classes], scalars: scalars)
    }
}
