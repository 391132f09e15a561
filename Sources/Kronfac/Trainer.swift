import Foundation
internal import CZlib

/// A report from the training loop.
public struct TrainingProgress: Sendable, CustomStringConvertible {
    /// The epochs completed so far.
    public let epoch: Int
    /// The steps (mini-batches) taken so far.
    public let step: Int
    /// The mean loss of the mini-batches since the previous report (before each step's update).
    public let trainingLoss: Float
    /// The mean loss on the held-out data, at the end of an epoch when validation data is given.
    public let validationLoss: Float?
    /// Whether this report closes an epoch.
    public let isEpochEnd: Bool

    public var description: String {
        var text = "epoch \(epoch) step \(step): training loss \(trainingLoss)"
        if let validationLoss { text += ", validation loss \(validationLoss)" }
        return text
    }
}

/// Trains a model with a loss and an optimizer on mini-batches: seeded shuffling, the
/// curvature pass when the optimizer needs it, progress reports, evaluation, and checkpoints that
/// resume bit-exactly.
///
/// Randomness comes from `seed` only: epoch `e` is shuffled by a generator derived from
/// `(seed, e)` and the sampled targets of step `t` from `(seed, t)`, so a resumed run draws
/// exactly what the uninterrupted run would have drawn.
public final class Trainer {
    public let model: Sequential
    public let loss: any Loss
    public let optimizer: Optimizer
    /// Examples per mini-batch (the last batch of an epoch may be smaller).
    public private(set) var batchSize: Int
    /// The seed of shuffling and sampling.
    public private(set) var seed: UInt64
    /// Steps taken.
    public private(set) var step = 0
    /// Epochs completed.
    public private(set) var epoch = 0
    /// Batches of the current epoch already taken.
    public private(set) var batchInEpoch = 0
    /// Examples of the training set of this run (fixed once training started).
    private var exampleCount = 0
    /// Data-parallel training: this process trains on part `rank` (contiguous, `count * rank /
    /// ranks ..< count * (rank + 1) / ranks`) of every mini-batch of `count` examples, the other
    /// processes on the other parts; the default `(0, 1)` is the whole batch. Every process draws
    /// the same batches (same data and seed), and a distributed optimizer (`distribute(mode:)`)
    /// combines the parts.
    public private(set) var batchShare: (rank: Int, ranks: Int) = (0, 1)

    /// Sets `batchShare`.
    ///
    /// - Throws: `.invalidArgument` unless `ranks >= 1` and `0 <= rank < ranks`.
    public func setBatchShare(rank: Int, ranks: Int) throws {
        guard ranks >= 1, (0..<ranks).contains(rank) else {
            throw KronfacError(.invalidArgument, "batch share \(rank) of \(ranks) is invalid: need 0 <= rank < ranks")
        }
        batchShare = (rank, ranks)
    }

    /// - Throws: `.invalidArgument` when `batchSize < 1`.
    public init(model: Sequential, loss: any Loss, optimizer: Optimizer, batchSize: Int = 100, seed: UInt64 = 0) throws {
        guard batchSize >= 1 else {
            throw KronfacError(.invalidArgument, "batchSize = \(batchSize) must be >= 1")
        }
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.batchSize = batchSize
        self.seed = seed
    }

    // MARK: Steps

    /// One optimization step on a mini-batch; returns the batch's loss before the update.
    ///
    /// - Throws: `.shape` for a batch that does not fit the model or the loss (or is empty),
    ///   `.nonFinite` for NaN or infinity in the batch, and whatever the optimizer reports. On error
    ///   neither the model nor the optimizer changed.
    @discardableResult
    public func trainStep(input: Tensor, target: Tensor) throws -> Float {
        guard input.rank >= 1, input.rowCount > 0 else {
            throw KronfacError(.shape, "the input batch is empty (shape \(input.shape))")
        }
        guard target.rank >= 1, target.rowCount == input.rowCount else {
            throw KronfacError(.shape,
                "the batch has \(input.rowCount) inputs but \(target.rank >= 1 ? target.rowCount : 0) targets")
        }
        guard input.isFinite else { throw KronfacError(.nonFinite, "the input batch contains NaN or infinity") }
        guard target.isFinite else { throw KronfacError(.nonFinite, "the target batch contains NaN or infinity") }
        let statistics = try optimizer.needsStatistics
        let output = try model.forward(input)
        let value = try loss.value(output, target: target)
        let gradient = try loss.gradient(output, target: target)
        _ = try model.backward(gradient, pass: .gradient, needsInputGradient: false)
        if optimizer.needsCurvaturePass(statistics) {
            var generator = SeededGenerator(seed: seed, stream: 0x4375_7276, index: UInt64(step))  // "Curv"
            let vectors = try loss.sampledCurvatureVectors(output, target: target, using: &generator)
            _ = try model.backward(vectors, pass: .curvature, needsInputGradient: false)
        }
        try optimizer.update(model)
        step += 1
        return value
    }

    /// The example order of an epoch.
    private func order(ofEpoch epoch: Int, count: Int) -> [Int] {
        var generator = SeededGenerator(seed: seed, stream: 0x5368_7566, index: UInt64(epoch))  // "Shuf"
        return generator.permutation(of: count)
    }

    /// The training data last checked whole, held so that its storage cannot change (a caller's
    /// mutation copies it): `fit` called again on the same data skips the scan.
    private var checkedData: Dataset?

    private func isChecked(_ data: Dataset) -> Bool {
        guard let checked = checkedData else { return false }
        func same(_ a: Tensor, _ b: Tensor) -> Bool {
            a.shape == b.shape && a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in pa.baseAddress == pb.baseAddress }
            }
        }
        return same(checked.inputs, data.inputs) && same(checked.targets, data.targets)
    }

    private func checkData(_ data: Dataset, role: String) throws {
        guard data.inputs.isFinite else { throw KronfacError(.nonFinite, "the \(role) inputs contain NaN or infinity") }
        guard data.targets.isFinite else { throw KronfacError(.nonFinite, "the \(role) targets contain NaN or infinity") }
        if let first = model.leaves.first as? Dense, data.inputs.rank == 2, data.inputs.columnCount != first.inputSize {
            throw KronfacError(.shape,
                "the \(role) inputs have \(data.inputs.columnCount) values per example, the model takes \(first.inputSize)")
        }
    }

    /// Trains until `epochs` epochs have been completed in total: a resumed trainer finishes the
    /// run it was saved from. Returns the mean training loss of the last report.
    ///
    /// - Parameters:
    ///   - validation: held-out data, evaluated at the end of every epoch.
    ///   - reportEvery: also report every this many steps (nil: at epoch ends only).
    ///   - progress: called with every report.
    @discardableResult
    public func fit(
        _ data: Dataset, epochs: Int, validation: Dataset? = nil, reportEvery: Int? = nil,
        progress: ((TrainingProgress) -> Void)? = nil
    ) throws -> Float {
        let batches = (data.count + batchSize - 1) / batchSize
        let remaining = max(0, (epochs - epoch) * batches - batchInEpoch)
        return try run(data, steps: remaining, validation: validation, reportEvery: reportEvery, progress: progress)
    }

    /// Trains `steps` more mini-batches, continuing the current epoch. Returns the mean training
    /// loss of the last report.
    @discardableResult
    public func fit(
        _ data: Dataset, steps: Int, validation: Dataset? = nil, reportEvery: Int? = nil,
        progress: ((TrainingProgress) -> Void)? = nil
    ) throws -> Float {
        guard steps >= 0 else { throw KronfacError(.invalidArgument, "steps = \(steps) must be >= 0") }
        return try run(data, steps: steps, validation: validation, reportEvery: reportEvery, progress: progress)
    }

    private func run(
        _ data: Dataset, steps: Int, validation: Dataset?, reportEvery: Int?,
        progress: ((TrainingProgress) -> Void)?
    ) throws -> Float {
        if let reportEvery, reportEvery < 1 {
            throw KronfacError(.invalidArgument, "reportEvery = \(reportEvery) must be >= 1")
        }
        if !isChecked(data) {
            try checkData(data, role: "training")
            checkedData = data
        }
        if let validation { try checkData(validation, role: "validation") }
        if exampleCount == 0 {
            exampleCount = data.count
        } else if exampleCount != data.count {
            throw KronfacError(.shape,
                "this run trains on \(exampleCount) examples; the data set given has \(data.count)")
        }
        let batches = (data.count + batchSize - 1) / batchSize
        var order = self.order(ofEpoch: epoch, count: data.count)
        var sum = 0.0, counted = 0
        var last = Float.nan
        func report(epochEnd: Bool) throws {
            last = counted > 0 ? Float(sum / Double(counted)) : .nan
            let validationLoss = epochEnd ? try validation.map { try evaluate($0) } : nil
            progress?(TrainingProgress(epoch: epoch, step: step, trainingLoss: last,
                                       validationLoss: validationLoss, isEpochEnd: epochEnd))
            sum = 0
            counted = 0
        }
        for _ in 0..<steps {
            let start = batchInEpoch * batchSize
            var indices = order[start..<min(start + batchSize, data.count)]
            if batchShare.ranks > 1 {
                let count = indices.count, first = indices.startIndex
                indices = indices[(first + count * batchShare.rank / batchShare.ranks)..<(first + count * (batchShare.rank + 1) / batchShare.ranks)]
            }
            let value = try trainStep(input: data.inputs.gatheringRows(indices),
                                      target: data.targets.gatheringRows(indices))
            sum += Double(value)
            counted += 1
            batchInEpoch += 1
            if batchInEpoch == batches {
                batchInEpoch = 0
                epoch += 1
                order = self.order(ofEpoch: epoch, count: data.count)
                try report(epochEnd: true)
            } else if let reportEvery, step % reportEvery == 0 {
                try report(epochEnd: false)
            }
        }
        if counted > 0 { last = Float(sum / Double(counted)) }
        return last
    }

    // MARK: Evaluation

    /// The mean loss over `data` (evaluated in batches; the model is not changed).
    public func evaluate(_ data: Dataset) throws -> Float {
        try checkData(data, role: "evaluation")
        var total = 0.0
        var start = 0
        let chunk = max(batchSize, 256)
        while start < data.count {
            let range = start..<min(start + chunk, data.count)
            let output = try model.forward(data.inputs.rows(range))
            total += Double(try loss.value(output, target: data.targets.rows(range))) * Double(range.count)
            start = range.upperBound
        }
        return Float(total / Double(data.count))
    }

    /// The fraction of examples whose largest output is at the position of the target's largest
    /// value (classification accuracy for one-hot targets).
    public func accuracy(_ data: Dataset) throws -> Float {
        try checkData(data, role: "evaluation")
        var correct = 0
        var start = 0
        while start < data.count {
            let range = start..<min(start + max(batchSize, 256), data.count)
            let output = try model.forward(data.inputs.rows(range))
            let target = data.targets.rows(range)
            guard output.columnCount == target.columnCount else {
                throw KronfacError(.shape,
                    "the model gives \(output.columnCount) outputs per example, the targets have \(target.columnCount)")
            }
            let width = output.columnCount
            for row in 0..<range.count {
                let o = output.scalars[(row * width)..<((row + 1) * width)]
                let t = target.scalars[(row * width)..<((row + 1) * width)]
                if o.indices.max(by: { o[$0] < o[$1] }) == t.indices.max(by: { t[$0] < t[$1] }) { correct += 1 }
            }
            start = range.upperBound
        }
        return Float(correct) / Float(data.count)
    }

    // MARK: Checkpoints

    private static let magic: [UInt8] = Array("KFTRAIN1".utf8)
    private static let formatVersion: UInt32 = 1

    /// Writes the model's parameters, the optimizer's state and the loop's position to `path`
    /// (through a temporary file renamed over it, so a crash leaves the old or the new file).
    public func save(to path: String) throws {
        var writer = ByteWriter()
        writer.bytes(Trainer.magic)
        writer.u32(Trainer.formatVersion)
        writer.u64(seed)
        writer.u64(UInt64(batchSize))
        writer.u64(UInt64(step))
        writer.u64(UInt64(epoch))
        writer.u64(UInt64(batchInEpoch))
        writer.u64(UInt64(exampleCount))
        writer.string(optimizer.algorithmName)
        writer.u8(optimizer.fisher.map { $0 == .sampled ? 1 : 2 } ?? 0)
        let layers = model.linearMaps
        writer.u32(UInt32(layers.count))
        for layer in layers {
            writer.u64(UInt64(layer.outputSize))
            writer.u64(UInt64(layer.inputSize))
            writer.u8(layer.hasBias ? 1 : 0)
            writer.floats(layer.weight.scalars)
            if let bias = layer.bias { writer.floats(bias.scalars) }
        }
        let state = try optimizer.checkpoint()
        writer.u64(UInt64(state.count))
        writer.bytes(state)
        writer.u32(crc(writer.data))
        do {
            try Data(writer.data).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw KronfacError(.io, "cannot write the checkpoint \(path): \(error.localizedDescription)")
        }
    }

    /// Restores a checkpoint written by `save(to:)` into this trainer, whose model must have the
    /// same dense layers and whose optimizer must be of the same kind. Seed, batch size, the
    /// optimizer's hyperparameters and the loop's position are taken from the checkpoint, so `fit`
    /// continues the saved run bit-exactly.
    ///
    /// - Throws: `.io` when the file cannot be read, `.format` when it is truncated, corrupt, of
    ///   another version or does not match the model or optimizer. On error nothing changed.
    public func restore(from path: String) throws {
        let data: [UInt8]
        do {
            data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw KronfacError(.io, "cannot read the checkpoint \(path): \(error.localizedDescription)")
        }
        guard data.count >= Trainer.magic.count + 8, Array(data.prefix(Trainer.magic.count)) == Trainer.magic else {
            throw KronfacError(.format, "\(path) is not a Kronfac training checkpoint (wrong magic)")
        }
        let body = data.prefix(data.count - 4)
        var tail = ByteReader(data.suffix(4), path: path)
        guard try tail.u32() == crc(Array(body)) else {
            throw KronfacError(.format, "\(path): checksum mismatch (the checkpoint is corrupt)")
        }
        var reader = ByteReader(Array(body), path: path)
        _ = try reader.bytes(Trainer.magic.count)
        let version = try reader.u32()
        guard version == Trainer.formatVersion else {
            throw KronfacError(.format, "\(path): checkpoint format version \(version), this library reads \(Trainer.formatVersion)")
        }
        let newSeed = try reader.u64()
        let newBatchSize = try reader.int()
        let newStep = try reader.int()
        let newEpoch = try reader.int()
        let newBatchInEpoch = try reader.int()
        let newExampleCount = try reader.int()
        let algorithm = try reader.string()
        guard algorithm == optimizer.algorithmName else {
            throw KronfacError(.format, "\(path) holds a \(algorithm) run; this trainer's optimizer is \(optimizer.algorithmName)")
        }
        let fisherCode = try reader.u8()
        guard fisherCode == (optimizer.fisher.map { $0 == .sampled ? 1 : 2 } ?? 0) else {
            throw KronfacError(.format, "\(path) was trained with another Fisher type than this optimizer's")
        }
        let layers = model.linearMaps
        let layerCount = Int(try reader.u32())
        guard layerCount == layers.count else {
            throw KronfacError(.format, "\(path) holds \(layerCount) layers with parameters, the model has \(layers.count)")
        }
        var parameters: [([Float], [Float]?)] = []
        for (index, layer) in layers.enumerated() {
            let out = try reader.int(), inp = try reader.int(), hasBias = try reader.u8() != 0
            guard out == layer.outputSize, inp == layer.inputSize, hasBias == layer.hasBias else {
                throw KronfacError(.format,
                    "\(path): layer \(index) is \(inp) -> \(out)\(hasBias ? "" : " without bias"), "
                        + "the model's is \(layer.inputSize) -> \(layer.outputSize)\(layer.hasBias ? "" : " without bias")")
            }
            let weight = try reader.floats(out * inp)
            let bias = hasBias ? try reader.floats(out) : nil
            parameters.append((weight, bias))
        }
        let stateCount = try reader.int()
        let state = try reader.bytes(stateCount)
        guard reader.isAtEnd else { throw KronfacError(.format, "\(path): unexpected bytes after the optimizer state") }
        guard newBatchSize >= 1, newBatchInEpoch >= 0, newExampleCount >= 0 else {
            throw KronfacError(.format, "\(path): invalid loop position")
        }
        // The optimizer validates its part and is the only step that can still fail.
        try optimizer.restore(state, model: model)
        for (layer, values) in zip(layers, parameters) {
            layer.restoreParameters(weight: values.0, bias: values.1)
            layer.forgetPasses()
        }
        seed = newSeed
        batchSize = newBatchSize
        step = newStep
        epoch = newEpoch
        batchInEpoch = newBatchInEpoch
        exampleCount = newExampleCount
    }
}

/// zlib's CRC-32 of a byte array.
func crc(_ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBufferPointer { buffer in
        var value = crc32(0, nil, 0)
        var offset = 0
        // zlib takes 32-bit lengths.
        while offset < buffer.count {
            let length = min(buffer.count - offset, 1 << 30)
            value = crc32(value, buffer.baseAddress! + offset, UInt32(length))
            offset += length
        }
        return UInt32(truncatingIfNeeded: value)
    }
}

/// Little-endian serialisation.
struct ByteWriter {
    var data: [UInt8] = []
    mutating func bytes(_ b: [UInt8]) { data.append(contentsOf: b) }
    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { data.append(contentsOf: $0) } }
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        bytes(utf8)
    }
    mutating func floats(_ values: [Float]) {
        data.reserveCapacity(data.count + 4 * values.count)
        for v in values { u32(v.bitPattern) }
    }
}

/// Little-endian deserialisation that fails with `.format` past the end.
struct ByteReader {
    private let data: [UInt8]
    private var offset = 0
    private let path: String

    init(_ data: some Collection<UInt8>, path: String) {
        self.data = Array(data)
        self.path = path
    }

    var isAtEnd: Bool { offset == data.count }

    mutating func bytes(_ count: Int) throws -> [UInt8] {
        guard count >= 0, count <= data.count - offset else {
            throw KronfacError(.format, "\(path) is truncated (needed \(count) bytes at offset \(offset))")
        }
        defer { offset += count }
        return Array(data[offset..<(offset + count)])
    }

    mutating func u8() throws -> UInt8 { try bytes(1)[0] }

    mutating func u32() throws -> UInt32 {
        try bytes(4).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func u64() throws -> UInt64 {
        try bytes(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    mutating func int() throws -> Int {
        let v = try u64()
        guard v <= UInt64(Int.max) else { throw KronfacError(.format, "\(path): a size is out of range") }
        return Int(v)
    }

    mutating func string() throws -> String {
        let count = Int(try u32())
        return String(decoding: try bytes(count), as: UTF8.self)
    }

    mutating func floats(_ count: Int) throws -> [Float] {
        guard count >= 0, count <= (data.count - offset) / 4 else {
            throw KronfacError(.format, "\(path) is truncated (needed \(count) floats at offset \(offset))")
        }
        var result = [Float](repeating: 0, count: count)
        for i in 0..<count {
            let base = offset + 4 * i
            let bits = UInt32(data[base]) | UInt32(data[base + 1]) << 8 | UInt32(data[base + 2]) << 16 | UInt32(data[base + 3]) << 24
            result[i] = Float(bitPattern: bits)
        }
        offset += 4 * count
        return result
    }
}
