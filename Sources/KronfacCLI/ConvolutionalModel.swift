import Foundation
import Kronfac

/// A small convolutional classifier for square single-channel images, written
/// `conv:16-32,dense:128`: one 3x3 convolution (padding 1) per channel count, each followed by the
/// activation and a 2x2 average pooling, then `Flatten` (or, with `gap`, a global average pooling),
/// the dense hidden layers with the activation, and a dense output layer of one logit per class.
/// `conv:16-32,gap` has no hidden dense layer.
public struct ConvolutionalModel: Codable, Equatable, Sendable, CustomStringConvertible {
    /// The output channels of the convolutions, in order.
    public var channels: [Int]
    /// Global average pooling after the convolutions instead of flattening.
    public var globalPooling: Bool
    /// The widths of the hidden dense layers.
    public var hidden: [Int]

    public init(channels: [Int], globalPooling: Bool = false, hidden: [Int] = []) {
        self.channels = channels
        self.globalPooling = globalPooling
        self.hidden = hidden
    }

    /// Parses a `--model` that starts with `conv:`; nil for anything else (layer widths).
    public static func parse(_ text: String) throws -> ConvolutionalModel? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.lowercased().hasPrefix("conv:") else { return nil }
        func fail(_ why: String) -> CLIError {
            CLIError("malformed --model \"\(text)\": \(why); e.g. conv:16-32,dense:128 or conv:16-32,gap")
        }
        func counts(_ list: Substring, _ what: String) throws -> [Int] {
            try list.split(separator: "-", omittingEmptySubsequences: false).map { part in
                guard let value = Int(part), value >= 1, value <= 4096 else {
                    throw fail("\"\(part)\" is not a \(what) in 1...4096")
                }
                return value
            }
        }
        var model = ConvolutionalModel(channels: [])
        for (index, item) in trimmed.split(separator: ",", omittingEmptySubsequences: false).enumerated() {
            let lowered = item.lowercased()
            if index == 0 {
                model.channels = try counts(item.dropFirst("conv:".count), "channel count")
            } else if lowered == "gap", index == 1 {
                model.globalPooling = true
            } else if lowered.hasPrefix("dense:"), model.hidden.isEmpty {
                model.hidden = try counts(item.dropFirst("dense:".count), "width")
            } else {
                throw fail("\"\(item)\" is not gap (right after conv:) or dense:WIDTHS (once, last)")
            }
        }
        return model
    }

    public var description: String {
        "conv:" + channels.map(String.init).joined(separator: "-") + (globalPooling ? ",gap" : "")
            + (hidden.isEmpty ? "" : ",dense:" + hidden.map(String.init).joined(separator: "-"))
    }

    /// The side of the square images of `inputWidth` pixels.
    static func imageSide(_ inputWidth: Int) throws -> Int {
        let side = Int(Double(inputWidth).squareRoot().rounded())
        guard side * side == inputWidth else {
            throw CLIError("a conv: model needs square single-channel images; the data has \(inputWidth) values per example")
        }
        return side
    }

    /// The side after the 2x2 poolings; fails when an image becomes smaller than a window.
    static func pooledSide(_ side: Int, poolings: Int) throws -> Int {
        var s = side
        for _ in 0..<poolings {
            guard s >= 2 else {
                throw CLIError("a conv: model with \(poolings) convolutions halves the image \(poolings) times; \(side)x\(side) images are too small")
            }
            s /= 2
        }
        return s
    }

    /// The width entering the first dense layer.
    func flattenedWidth(inputWidth: Int) throws -> Int {
        let side = try Self.pooledSide(Self.imageSide(inputWidth), poolings: channels.count)
        return globalPooling ? channels.last! : channels.last! * side * side
    }

    /// The number of weights and biases.
    func parameterCount(inputWidth: Int, classes: Int) throws -> Int {
        var count = 0, previous = 1
        for c in channels {
            count += c * previous * 9 + c
            previous = c
        }
        let widths = [try flattenedWidth(inputWidth: inputWidth)] + hidden + [classes]
        for (a, b) in zip(widths, widths.dropFirst()) { count += a * b + b }
        return count
    }

    /// The layers (without seeding) for images of `inputWidth` pixels and `classes` outputs.
    func layers(inputWidth: Int, classes: Int, bias: Bool, activation: () -> any Layer) throws -> [any Layer] {
        let side = try Self.imageSide(inputWidth)
        var layers: [any Layer] = [Reshape([1, side, side])]
        var previous = 1
        for c in channels {
            layers += [Conv2D(previous, c, kernelSize: 3, padding: 1, bias: bias), activation(), Pool2D(.average, kernelSize: 2)]
            previous = c
        }
        layers.append(globalPooling ? GlobalAveragePool() : Flatten())
        let widths = [try flattenedWidth(inputWidth: inputWidth)] + hidden
        for (a, b) in zip(widths, widths.dropFirst()) {
            layers += [Dense(a, b, bias: bias, initialization: .he), activation()]
        }
        layers.append(Dense(widths.last!, classes, bias: bias, initialization: .he))
        return layers
    }
}
