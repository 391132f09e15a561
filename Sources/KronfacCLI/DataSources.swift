import Foundation
import Kronfac

/// Where the examples come from (`--data`).
public enum DataSource: Equatable, Codable, Sendable, CustomStringConvertible {
    /// Debian's `dataset-fashion-mnist` (or `KRONFAC_FASHION_MNIST_DIR`).
    case fashionMNIST
    /// The generated curves images (autoencoder only: they have no labels).
    case curves
    /// A directory of MNIST-format IDX files.
    case idx(String)
    /// A CSV file of numbers, one example per line.
    case csv(String)

    /// Parses `fashion-mnist`, `curves`, `idx:DIR` or `csv:FILE`.
    public init(parsing text: String) throws {
        let lower = text.lowercased()
        if lower == "fashion-mnist" || lower == "fashion_mnist" || lower == "fashionmnist" {
            self = .fashionMNIST
        } else if lower == "curves" {
            self = .curves
        } else if lower.hasPrefix("idx:") {
            let path = String(text.dropFirst(4))
            guard !path.isEmpty else { throw CLIError("--data idx: needs a directory, e.g. idx:data/mnist") }
            self = .idx(path)
        } else if lower.hasPrefix("csv:") {
            let path = String(text.dropFirst(4))
            guard !path.isEmpty else { throw CLIError("--data csv: needs a file, e.g. csv:data/train.csv") }
            self = .csv(path)
        } else {
            throw CLIError("unknown data source \"\(text)\"; use fashion-mnist, curves, idx:DIR or csv:FILE")
        }
    }

    /// The spelling `--data` takes.
    public var argument: String {
        switch self {
        case .fashionMNIST: return "fashion-mnist"
        case .curves: return "curves"
        case .idx(let path): return "idx:\(path)"
        case .csv(let path): return "csv:\(path)"
        }
    }

    public var description: String { argument }

    /// The task the data is for when `--task` is not given.
    public var defaultTask: TrainingTask { self == .curves ? .autoencoder : .classify }
}

/// Training and test examples ready for a task.
public struct LoadedData {
    public let training: Dataset
    public let test: Dataset
    /// Whether `test` was split off the training data (no test files).
    public let testIsHeldOut: Bool
    /// The number of classes (classification), nil for an autoencoder.
    public let classes: Int?
    /// One line saying what was loaded, for the run's header.
    public let summary: String

    public var inputWidth: Int { training.inputs.columnCount }
}

public enum DataLoader {
    /// Where Debian's `dataset-fashion-mnist` puts the files; `KRONFAC_FASHION_MNIST_DIR` overrides.
    public static var fashionMNISTDirectory: String {
        ProcessInfo.processInfo.environment["KRONFAC_FASHION_MNIST_DIR"] ?? "/usr/share/datasets/fashion-mnist"
    }

    /// Whether the Fashion-MNIST training pair is installed.
    public static var fashionMNISTInstalled: Bool {
        let directory = fashionMNISTDirectory
        return findIDX(directory, "train-images-idx3-ubyte") != nil && findIDX(directory, "train-labels-idx1-ubyte") != nil
    }

    /// The data when `--data` is not given: Fashion-MNIST when installed, otherwise curves, and
    /// a line that says which.
    public static func defaultSource() -> (source: DataSource, note: String) {
        if fashionMNISTInstalled {
            return (.fashionMNIST, "no --data given: using Fashion-MNIST from \(fashionMNISTDirectory)")
        }
        return (.curves, "no --data given and Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): "
            + "using the generated curves data set")
    }

    /// The share of the training data held out for testing when there is no test set.
    public static let heldOutFraction = 1.0 / 6.0
    /// The most classes a CSV file may have (one-hot targets take rows x classes floats).
    public static let maximumClasses = 10_000
    /// The size of the generated curves sets.
    public static let curvesTrainingCount = 20_000
    public static let curvesTestCount = 10_000

    /// Loads a data source for a task.
    /// - Parameter seed: shuffles the held-out split (when there is no test set).
    /// - Throws: `CLIError` for a missing file or a task the data cannot serve; `KronfacError` for
    ///   unreadable or corrupt files.
    public static func load(_ source: DataSource, task: TrainingTask, seed: UInt64) throws -> LoadedData {
        switch source {
        case .fashionMNIST:
            let directory = fashionMNISTDirectory
            guard FileManager.default.fileExists(atPath: directory) else {
                throw CLIError("Fashion-MNIST is not installed: \(directory) does not exist "
                    + "(apt-get install dataset-fashion-mnist)")
            }
            return try loadIDX(directory, task: task, seed: seed, name: "Fashion-MNIST")
        case .idx(let directory):
            return try loadIDX(directory, task: task, seed: seed, name: "IDX")
        case .csv(let path):
            return try loadCSV(path, task: task, seed: seed)
        case .curves:
            guard task == .autoencoder else {
                throw CLIError("the curves data set has no labels: use it with --task autoencoder")
            }
            let (training, test) = try Curves.dataset(
                trainingCount: curvesTrainingCount, testCount: curvesTestCount, seed: 0)
            return LoadedData(training: training, test: test, testIsHeldOut: false, classes: nil,
                              summary: "curves (generated): \(training.count) training, \(test.count) test images of 28x28")
        }
    }

    /// The path of `base` or `base.gz` in `directory` (also the `train-images.idx3-ubyte` spelling).
    static func findIDX(_ directory: String, _ base: String) -> String? {
        let dotted = base.replacingOccurrences(of: "-idx", with: ".idx")
        for name in [base, base + ".gz", dotted, dotted + ".gz"] {
            let path = (directory as NSString).appendingPathComponent(name)
            if FileManager.default.isReadableFile(atPath: path) { return path }
        }
        return nil
    }

    private static func loadIDX(_ directory: String, task: TrainingTask, seed: UInt64, name: String) throws -> LoadedData {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CLIError("\(directory) is not a directory (--data idx:DIR needs a directory of IDX files)")
        }
        func require(_ base: String) throws -> String {
            guard let path = findIDX(directory, base) else {
                throw CLIError("\(directory) has no \(base) (plain or .gz)")
            }
            return path
        }
        let trainImages = try require("train-images-idx3-ubyte")
        let trainLabels = task == .classify ? try require("train-labels-idx1-ubyte") : nil
        let testImages = findIDX(directory, "t10k-images-idx3-ubyte")
        let testLabels = findIDX(directory, "t10k-labels-idx1-ubyte")
        if task == .classify, (testImages == nil) != (testLabels == nil) {
            throw CLIError("\(directory) has \(testImages != nil ? "t10k-images" : "t10k-labels") but not "
                + "\(testImages != nil ? "t10k-labels-idx1-ubyte" : "t10k-images-idx3-ubyte") (give both or neither)")
        }
        func dataset(_ images: String, _ labels: String?) throws -> Dataset {
            if let labels { return try MNIST.load(images: images, labels: labels) }
            let x = try MNIST.loadImages(images)
            return try Dataset(inputs: x, targets: x)
        }
        let full = try dataset(trainImages, trainLabels)
        let split: (training: Dataset, test: Dataset, heldOut: Bool)
        if let testImages, task == .autoencoder || testLabels != nil {
            let test = try dataset(testImages, task == .classify ? testLabels : nil)
            guard test.inputs.columnCount == full.inputs.columnCount else {
                throw CLIError("\(testImages) has images of \(test.inputs.columnCount) pixels, the training images \(full.inputs.columnCount)")
            }
            split = (full, test, false)
        } else {
            let (training, test) = try heldOut(full, seed: seed, name: trainImages)
            split = (training, test, true)
        }
        let side = Int(Double(full.inputs.columnCount).squareRoot())
        let shape = side * side == full.inputs.columnCount ? "\(side)x\(side)" : "\(full.inputs.columnCount)-pixel"
        let testText = split.heldOut ? "\(split.test.count) held out (no t10k files)" : "\(split.test.count) test"
        return LoadedData(
            training: split.training, test: split.test, testIsHeldOut: split.heldOut,
            classes: task == .classify ? 10 : nil,
            summary: "\(name) from \(directory): \(split.training.count) training, \(testText) images of \(shape)")
    }

    private static func heldOut(_ data: Dataset, seed: UInt64, name: String) throws -> (Dataset, Dataset) {
        guard data.count >= 2 else {
            throw CLIError("\(name) holds \(data.count) example; a held-out test split needs at least 2")
        }
        let testCount = max(1, Int((Double(data.count) * heldOutFraction).rounded()))
        return try data.split(trainingCount: data.count - testCount, seed: seed)
    }

    private static func loadCSV(_ path: String, task: TrainingTask, seed: UInt64) throws -> LoadedData {
        let (_, values) = try CSV.read(path)
        let rows = values.rowCount, width = values.columnCount
        let full: Dataset
        var classes: Int? = nil
        switch task {
        case .classify:
            guard width >= 2 else {
                throw CLIError("\(path): classification needs input columns and a last column of class labels; it has \(width) column")
            }
            var labels: [Int] = []
            var inputs: [Float] = []
            inputs.reserveCapacity(rows * (width - 1))
            for r in 0..<rows {
                let v = values[r, width - 1]
                guard v == v.rounded(), v >= 0 else {
                    throw CLIError("\(path) data row \(r + 1): the class label (last column) \(v) is not an integer >= 0")
                }
                guard v < Float(maximumClasses) else {
                    throw CLIError("\(path) data row \(r + 1): class label \(Int(v)) is too large (at most \(maximumClasses) classes)")
                }
                labels.append(Int(v))
                for c in 0..<(width - 1) { inputs.append(values[r, c]) }
            }
            let count = (labels.max() ?? 0) + 1
            guard count >= 2 else { throw CLIError("\(path): every label is 0; classification needs at least two classes") }
            classes = count
            full = try Dataset(inputs: Tensor(shape: [rows, width - 1], scalars: inputs),
                               targets: Dataset.oneHot(labels, classes: count))
        case .autoencoder:
            if let bad = values.scalars.firstIndex(where: { $0 < 0 || $0 > 1 }) {
                throw CLIError("\(path) data row \(bad / width + 1): value \(values.scalars[bad]) is outside [0, 1], "
                    + "which the autoencoder's sigmoid cross-entropy needs (scale the data)")
            }
            full = try Dataset(inputs: values, targets: values)
        }
        let (training, test) = try heldOut(full, seed: seed, name: path)
        let classText = classes.map { ", \($0) classes" } ?? ""
        return LoadedData(training: training, test: test, testIsHeldOut: true, classes: classes,
                          summary: "CSV \(path): \(training.count) training, \(test.count) held-out examples of \(full.inputs.columnCount) values\(classText)")
    }
}
