import Foundation

/// A problem with what the user asked for (an option, a file, a checkpoint directory): reported
/// as one line, never with a stack trace.
public struct CLIError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The optimizers the command line compares.
public enum OptimizerKind: String, CaseIterable, Codable, Sendable, Comparable {
    case foof, kfac, ekfac, adam, sgd

    /// The name in tables, legends and the CSV.
    public var displayName: String {
        switch self {
        case .foof: return "FOOF"
        case .kfac: return "K-FAC"
        case .ekfac: return "EKFAC"
        case .adam: return "Adam"
        case .sgd: return "SGD"
        }
    }

    /// Whether the optimizer has a damping and curvature factors (inverse interval, subsampling).
    public var isSecondOrder: Bool { self == .foof || self == .kfac || self == .ekfac }

    public static func < (a: OptimizerKind, b: OptimizerKind) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }

    /// Parses "foof,kfac,adam,sgd" (case-insensitive; "k-fac" accepted), keeping the given order.
    public static func parseList(_ text: String) throws -> [OptimizerKind] {
        var result: [OptimizerKind] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let name = item.trimmingCharacters(in: .whitespaces).lowercased().replacingOccurrences(of: "-", with: "")
            guard let kind = OptimizerKind(rawValue: name) else {
                throw CLIError("unknown optimizer \"\(item)\" in --optimizers \"\(text)\"; choose from "
                    + allCases.map(\.rawValue).joined(separator: ", "))
            }
            guard !result.contains(kind) else {
                throw CLIError("optimizer \(kind.rawValue) is listed twice in --optimizers \"\(text)\"")
            }
            result.append(kind)
        }
        return result
    }
}

/// What the network learns.
public enum TrainingTask: String, CaseIterable, Codable, Sendable {
    /// Class labels; softmax cross-entropy; reports test accuracy.
    case classify
    /// Reconstruct the inputs through a narrow code; sigmoid cross-entropy summed over the outputs.
    case autoencoder
}

/// The nonlinearity between dense layers.
public enum ActivationChoice: String, CaseIterable, Codable, Sendable {
    case relu, tanh, sigmoid
}

/// Layer widths such as "784-1000-1000-1000-10".
public enum Widths {
    /// Parses widths separated by "-" (or ","): at least two, each a positive integer.
    public static func parse(_ text: String) throws -> [Int] {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let parts = trimmed.split(omittingEmptySubsequences: false) { $0 == "-" || $0 == "," }
        guard parts.count >= 2 else {
            throw CLIError("malformed widths \"\(text)\": give at least two layer widths separated by '-', e.g. 784-1000-10")
        }
        return try parts.map { part in
            guard let width = Int(part), width >= 1 else {
                throw CLIError("malformed widths \"\(text)\": \"\(part)\" is not a positive integer width")
            }
            guard width <= 1 << 20 else {
                throw CLIError("malformed widths \"\(text)\": width \(width) is larger than 1048576")
            }
            return width
        }
    }

    /// The widths of an autoencoder whose encoder is `encoder` (input ... code): the decoder
    /// mirrors it back to the input width.
    public static func mirrored(_ encoder: [Int]) -> [Int] {
        encoder + encoder.dropLast().reversed()
    }

    public static func format(_ widths: [Int]) -> String {
        widths.map(String.init).joined(separator: "-")
    }
}

/// Per-optimizer values such as `--lr foof=0.3,kfac=0.1` or one value for all (`--lr 0.1`).
public struct PerOptimizerValues: Equatable, Sendable {
    /// The value for every optimizer not named.
    public var all: Double?
    public var named: [OptimizerKind: Double] = [:]

    public init(all: Double? = nil, named: [OptimizerKind: Double] = [:]) {
        self.all = all
        self.named = named
    }

    public func value(for kind: OptimizerKind) -> Double? { named[kind] ?? all }

    public var isEmpty: Bool { all == nil && named.isEmpty }

    /// Parses every occurrence of an option (each a comma-separated list of NAME=VALUE or VALUE).
    /// - Parameter valid: checks one value; returns nil when it is fine, or what is wrong.
    public static func parse(
        _ occurrences: [String], option: String, valid: (Double) -> String?
    ) throws -> PerOptimizerValues {
        var result = PerOptimizerValues()
        for occurrence in occurrences {
            for item in occurrence.split(separator: ",") {
                let pieces = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let valueText = String(pieces.last!).trimmingCharacters(in: .whitespaces)
                guard let value = Double(valueText), value.isFinite else {
                    throw CLIError("\(option) \"\(occurrence)\": \"\(valueText)\" is not a number")
                }
                if let problem = valid(value) {
                    throw CLIError("\(option) \"\(occurrence)\": \(valueText) \(problem)")
                }
                if pieces.count == 2 {
                    let name = pieces[0].trimmingCharacters(in: .whitespaces).lowercased()
                        .replacingOccurrences(of: "-", with: "")
                    guard let kind = OptimizerKind(rawValue: name) else {
                        throw CLIError("\(option) \"\(occurrence)\": unknown optimizer \"\(pieces[0])\"; choose from "
                            + OptimizerKind.allCases.map(\.rawValue).joined(separator: ", "))
                    }
                    result.named[kind] = value
                } else {
                    result.all = value
                }
            }
        }
        return result
    }
}
