internal import CKronfac

// Layers for images (NCHW: examples, channels, height, width) and for sequences ([n, R, d]: R
// positions of d features), and the shape layers between them and dense layers.

/// A 2-D convolution over NCHW inputs: `[n, inputChannels, H, W]` to `[n, outputChannels, OH, OW]`
/// with `OH = (H + 2 padding - dilation (kernel - 1) - 1) / stride + 1` (OW alike).
///
/// To the optimizers it is a dense layer of `outputChannels x (inputChannels * kernel * kernel)`
/// weights shared over the `OH * OW` output locations (KFC, Grosse & Martens 2016), factored
/// with K-FAC-expand or -reduce as `sharedAxis` says.
public final class Conv2D: Layer, InputGradientSkipping {
    public let inputChannels: Int
    public let outputChannels: Int
    public let kernelHeight: Int
    public let kernelWidth: Int
    public let stride: Int
    public let padding: Int
    public let dilation: Int
    /// The weight matrix, `[outputChannels, inputChannels * kernelHeight * kernelWidth]`, updated
    /// by the optimizers like a dense layer's.
    let linear: Dense
    /// The geometry of the last forward pass.
    private var lastShape: kf_conv2d_shape?

    /// - Parameters:
    ///   - inputChannels: channels of the input, at least 1.
    ///   - outputChannels: channels of the output (filters), at least 1.
    ///   - kernelSize: the filters' height and width, at least 1.
    ///   - stride: the step between output locations, at least 1.
    ///   - padding: zeros added on every side of the input.
    ///   - dilation: the spacing of the filter taps, at least 1.
    ///   - bias: whether each output channel has a bias (initialised to zero).
    ///   - initialization: He (ReLU, the default) or Glorot, over the fan-in of one filter.
    ///   - seed: the seed of the weights; `Sequential(seed:)` reseeds its layers.
    ///   - sharedAxis: how the optimizers factor the layer over its output locations.
    public init(
        _ inputChannels: Int, _ outputChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
        dilation: Int = 1, bias: Bool = true, initialization: Initialization = .he, seed: UInt64 = 0,
        sharedAxis: SharedAxisApproximation = .automatic
    ) {
        precondition(inputChannels >= 1 && outputChannels >= 1, "Conv2D needs at least one input and one output channel")
        precondition(kernelSize >= 1 && stride >= 1 && dilation >= 1 && padding >= 0,
                     "Conv2D needs kernelSize, stride and dilation >= 1 and padding >= 0")
        self.inputChannels = inputChannels
        self.outputChannels = outputChannels
        self.kernelHeight = kernelSize
        self.kernelWidth = kernelSize
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        linear = Dense(inputChannels * kernelSize * kernelSize, outputChannels, bias: bias,
                       initialization: initialization, seed: seed, sharedAxis: sharedAxis)
    }

    var name: String { "Conv2D(\(inputChannels), \(outputChannels), kernelSize: \(kernelHeight))" }

    /// The filters, `[outputChannels, inputChannels, kernelHeight, kernelWidth]`.
    public var weight: Tensor {
        Tensor(uncheckedShape: [outputChannels, inputChannels, kernelHeight, kernelWidth], scalars: linear.weight.scalars)
    }
    /// The bias, `[outputChannels]`, or nil.
    public var bias: Tensor? { linear.bias }
    /// Whether the output channels have biases.
    public var hasBias: Bool { linear.hasBias }
    /// The gradient of the batch-mean loss with respect to `weight`, from the last gradient pass.
    public var weightGradient: Tensor {
        Tensor(uncheckedShape: [outputChannels, inputChannels, kernelHeight, kernelWidth],
               scalars: linear.weightGradient.scalars)
    }
    /// The gradient of the batch-mean loss with respect to `bias`, from the last gradient pass.
    public var biasGradient: Tensor? { linear.biasGradient }
    /// The number of trainable scalars.
    public var parameterCount: Int { linear.parameterCount }
    /// How the optimizers factor the layer over its output locations.
    public var sharedAxis: SharedAxisApproximation {
        get { linear.sharedAxis }
        set { linear.sharedAxis = newValue }
    }

    /// Draws new filters from the layer's initialisation scheme and zeroes the bias.
    public func initialize(seed: UInt64) { linear.initialize(seed: seed) }

    /// Replaces the parameters (`weight` as `[outputChannels, inputChannels, kernel, kernel]` or
    /// as the matrix `[outputChannels, inputChannels * kernel * kernel]`); as `Dense.setParameters`.
    public func setParameters(weight newWeight: Tensor, bias newBias: Tensor? = nil) throws {
        let matrix = [outputChannels, inputChannels * kernelHeight * kernelWidth]
        guard newWeight.shape == [outputChannels, inputChannels, kernelHeight, kernelWidth] || newWeight.shape == matrix else {
            throw KronfacError(.shape,
                "weight has shape \(newWeight.shape), the layer needs [\(outputChannels), \(inputChannels), \(kernelHeight), \(kernelWidth)]")
        }
        try linear.setParameters(weight: Tensor(uncheckedShape: matrix, scalars: newWeight.scalars), bias: newBias)
    }

    private func geometry(of input: Tensor) throws -> kf_conv2d_shape {
        guard input.rank == 4, input.shape[1] == inputChannels else {
            throw KronfacError(.shape,
                "\(name) input must have shape [n, \(inputChannels), height, width]; got \(input.shape)")
        }
        guard input.scalarCount > 0 else { throw KronfacError(.shape, "\(name) input is empty (shape \(input.shape))") }
        var s = kf_conv2d_shape()
        _ = kf_conv2d_shape_init(&s, input.shape[0], inputChannels, input.shape[2], input.shape[3], outputChannels,
                                 kernelHeight, kernelWidth)
        s.stride_h = stride; s.stride_w = stride
        s.pad_h = padding; s.pad_w = padding
        s.dilation_h = dilation; s.dilation_w = dilation
        return s
    }

    public func forward(_ input: Tensor) throws -> Tensor {
        var s = try geometry(of: input)
        let context = try linear.context
        var oh = 0, ow = 0
        guard kf_conv2d_output_size(context.handle, &s, &oh, &ow) == KF_OK else {
            throw KronfacError(.shape,
                "\(name): a \(input.shape[2])x\(input.shape[3]) input is smaller than the (dilated) kernel with padding \(padding)")
        }
        let n = s.batch, r = oh * ow, width = linear.inputSize
        let patches = try Tensor.matrix(rows: n * r, columns: width) { col in
            try input.withUnsafeBufferPointer { x in
                try context.check(kf_im2col(context.handle, &s, x.baseAddress, col.baseAddress, width))
            }
        }
        let rows = try linear.forward(rows: patches, examples: n)
        lastShape = s
        // rows[n*R + r][o] -> y[n][o][r].
        let out = outputChannels
        let y = rows.withUnsafeBufferPointer { source in
            [Float](unsafeUninitializedCapacity: n * out * r) { buffer, initialized in
                for example in 0..<n {
                    for position in 0..<r {
                        let from = source.baseAddress! + (example * r + position) * out
                        for o in 0..<out { buffer[(example * out + o) * r + position] = from[o] }
                    }
                }
                initialized = n * out * r
            }
        }
        return Tensor(uncheckedShape: [n, out, oh, ow], scalars: y)
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        try backward(outputGradient, pass: pass, needsInputGradient: true)!
    }

    func backward(_ outputGradient: Tensor, pass: BackwardPass, needsInputGradient: Bool) throws -> Tensor? {
        guard var s = lastShape else { throw KronfacError(.state, "\(name).backward called before forward") }
        let context = try linear.context
        var oh = 0, ow = 0
        try context.check(kf_conv2d_output_size(context.handle, &s, &oh, &ow))
        let expected = [s.batch, outputChannels, oh, ow]
        guard outputGradient.shape == expected else {
            throw KronfacError(.shape,
                "\(name) output gradient has shape \(outputGradient.shape), the last forward pass gave \(expected)")
        }
        let rows = try Tensor.matrix(rows: s.batch * oh * ow, columns: outputChannels) { g in
            try outputGradient.withUnsafeBufferPointer { dy in
                try context.check(kf_conv2d_output_rows(context.handle, &s, dy.baseAddress, g.baseAddress, outputChannels))
            }
        }
        guard let patchGradient = try linear.backward(rows: rows, pass: pass, needsInputGradient: needsInputGradient) else {
            return nil
        }
        return try Tensor.matrix(rows: s.batch, columns: inputChannels * s.height * s.width) { dx in
            try patchGradient.withUnsafeBufferPointer { col in
                try context.check(kf_col2im(context.handle, &s, col.baseAddress, linear.inputSize, dx.baseAddress))
            }
        }.reshapedUnchecked([s.batch, inputChannels, s.height, s.width])
    }
}

extension Tensor {
    /// The same scalars with another shape of the same count (internal: no validation).
    func reshapedUnchecked(_ newShape: [Int]) -> Tensor {
        Tensor(uncheckedShape: newShape, scalars: scalars)
    }
}

/// Window pooling over NCHW inputs: the average or the sum of each `kernelSize x kernelSize`
/// window, `stride` apart (no padding; windows that do not fit are dropped).
public final class Pool2D: Layer {
    public enum Kind: Sendable { case average, sum }
    public let kind: Kind
    public let kernelSize: Int
    public let stride: Int
    private var lastInputShape: [Int]?

    /// - Parameters:
    ///   - kind: average or sum.
    ///   - kernelSize: the window's height and width, at least 1.
    ///   - stride: the step between windows (default: the window size), at least 1.
    public init(_ kind: Kind, kernelSize: Int, stride: Int? = nil) {
        precondition(kernelSize >= 1 && (stride ?? 1) >= 1, "Pool2D needs kernelSize and stride >= 1")
        self.kind = kind
        self.kernelSize = kernelSize
        self.stride = stride ?? kernelSize
    }

    var name: String { "Pool2D(.\(kind), kernelSize: \(kernelSize))" }

    private func outputSize(_ extent: Int) -> Int { extent < kernelSize ? 0 : (extent - kernelSize) / stride + 1 }

    private var weight: Float { kind == .average ? 1 / Float(kernelSize * kernelSize) : 1 }

    public func forward(_ input: Tensor) throws -> Tensor {
        guard input.rank == 4, input.scalarCount > 0 else {
            throw KronfacError(.shape, "\(name) input must have shape [n, channels, height, width]; got \(input.shape)")
        }
        let (n, c, h, w) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3])
        let oh = outputSize(h), ow = outputSize(w)
        guard oh > 0, ow > 0 else {
            throw KronfacError(.shape, "\(name): a \(h)x\(w) input is smaller than the window")
        }
        let k = kernelSize, st = stride, scale = weight
        var output = [Float](repeating: 0, count: n * c * oh * ow)
        input.withUnsafeBufferPointer { x in
            for plane in 0..<(n * c) {
                let source = x.baseAddress! + plane * h * w
                for i in 0..<oh {
                    for j in 0..<ow {
                        var sum: Float = 0
                        for di in 0..<k {
                            for dj in 0..<k { sum += source[(i * st + di) * w + j * st + dj] }
                        }
                        output[(plane * oh + i) * ow + j] = scale * sum
                    }
                }
            }
        }
        lastInputShape = input.shape
        return Tensor(uncheckedShape: [n, c, oh, ow], scalars: output)
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        guard let shape = lastInputShape else { throw KronfacError(.state, "\(name).backward called before forward") }
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let oh = outputSize(h), ow = outputSize(w)
        guard outputGradient.shape == [n, c, oh, ow] else {
            throw KronfacError(.shape,
                "\(name) output gradient has shape \(outputGradient.shape), the last forward pass gave \([n, c, oh, ow])")
        }
        let k = kernelSize, st = stride, scale = weight
        var dx = [Float](repeating: 0, count: n * c * h * w)
        outputGradient.withUnsafeBufferPointer { g in
            for plane in 0..<(n * c) {
                for i in 0..<oh {
                    for j in 0..<ow {
                        let value = scale * g[(plane * oh + i) * ow + j]
                        for di in 0..<k {
                            for dj in 0..<k { dx[plane * h * w + (i * st + di) * w + j * st + dj] += value }
                        }
                    }
                }
            }
        }
        return Tensor(uncheckedShape: shape, scalars: dx)
    }
}

/// The average over all locations of each channel: `[n, C, H, W]` to `[n, C]`. Convolutions before
/// it are factored with K-FAC-reduce by default.
public final class GlobalAveragePool: Layer {
    private var lastInputShape: [Int]?

    public init() {}

    public func forward(_ input: Tensor) throws -> Tensor {
        guard input.rank == 4, input.scalarCount > 0 else {
            throw KronfacError(.shape, "GlobalAveragePool input must have shape [n, channels, height, width]; got \(input.shape)")
        }
        let planes = input.shape[0] * input.shape[1], area = input.shape[2] * input.shape[3]
        let scale = 1 / Float(area)
        let output = input.withUnsafeBufferPointer { x in
            (0..<planes).map { plane -> Float in
                var sum: Float = 0
                for index in (plane * area)..<((plane + 1) * area) { sum += x[index] }
                return scale * sum
            }
        }
        lastInputShape = input.shape
        return Tensor(uncheckedShape: [input.shape[0], input.shape[1]], scalars: output)
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        guard let shape = lastInputShape else { throw KronfacError(.state, "GlobalAveragePool.backward called before forward") }
        guard outputGradient.shape == [shape[0], shape[1]] else {
            throw KronfacError(.shape,
                "GlobalAveragePool output gradient has shape \(outputGradient.shape), the last forward pass gave \([shape[0], shape[1]])")
        }
        let area = shape[2] * shape[3]
        let scale = 1 / Float(area)
        var dx = [Float](repeating: 0, count: shape.reduce(1, *))
        for (plane, value) in outputGradient.scalars.enumerated() {
            for index in (plane * area)..<((plane + 1) * area) { dx[index] = scale * value }
        }
        return Tensor(uncheckedShape: shape, scalars: dx)
    }
}

/// The average or the sum over the shared axis of a sequence: `[n, R, d]` to `[n, d]`. Dense
/// layers applied along the axis before it are factored with K-FAC-reduce by default.
public final class SharedAxisPool: Layer {
    public let kind: Pool2D.Kind
    private var lastInputShape: [Int]?

    public init(_ kind: Pool2D.Kind) { self.kind = kind }

    public func forward(_ input: Tensor) throws -> Tensor {
        guard input.rank == 3, input.scalarCount > 0 else {
            throw KronfacError(.shape, "SharedAxisPool input must have shape [n, positions, features]; got \(input.shape)")
        }
        let (n, r, d) = (input.shape[0], input.shape[1], input.shape[2])
        let scale: Float = kind == .average ? 1 / Float(r) : 1
        var output = [Float](repeating: 0, count: n * d)
        input.withUnsafeBufferPointer { x in
            for example in 0..<n {
                for position in 0..<r {
                    for j in 0..<d { output[example * d + j] += x[(example * r + position) * d + j] }
                }
            }
        }
        for index in output.indices { output[index] *= scale }
        lastInputShape = input.shape
        return Tensor(uncheckedShape: [n, d], scalars: output)
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        guard let shape = lastInputShape else { throw KronfacError(.state, "SharedAxisPool.backward called before forward") }
        let (n, r, d) = (shape[0], shape[1], shape[2])
        guard outputGradient.shape == [n, d] else {
            throw KronfacError(.shape,
                "SharedAxisPool output gradient has shape \(outputGradient.shape), the last forward pass gave \([n, d])")
        }
        let scale: Float = kind == .average ? 1 / Float(r) : 1
        var dx = [Float](repeating: 0, count: n * r * d)
        for example in 0..<n {
            for position in 0..<r {
                for j in 0..<d { dx[(example * r + position) * d + j] = scale * outputGradient.scalars[example * d + j] }
            }
        }
        return Tensor(uncheckedShape: shape, scalars: dx)
    }
}

/// `[n, d1, d2, ...]` to `[n, d1 * d2 * ...]` (no copy), e.g. between convolutions and dense layers.
public final class Flatten: Layer {
    private var lastInputShape: [Int]?

    public init() {}

    public func forward(_ input: Tensor) throws -> Tensor {
        guard input.rank >= 1, input.rowCount > 0 else {
            throw KronfacError(.shape, "Flatten input is an empty batch (shape \(input.shape))")
        }
        lastInputShape = input.shape
        return input.reshapedUnchecked([input.rowCount, input.columnCount])
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        guard let shape = lastInputShape else { throw KronfacError(.state, "Flatten.backward called before forward") }
        guard outputGradient.scalarCount == shape.reduce(1, *), outputGradient.rank >= 1,
              outputGradient.rowCount == shape[0] else {
            throw KronfacError(.shape,
                "Flatten output gradient has shape \(outputGradient.shape), the last forward pass took \(shape)")
        }
        return outputGradient.reshapedUnchecked(shape)
    }
}

/// Gives every example the shape `exampleShape` (same number of values), e.g. `[1, 28, 28]` to
/// feed flat 784-pixel images to a `Conv2D`.
public final class Reshape: Layer {
    public let exampleShape: [Int]
    private var lastInputShape: [Int]?

    public init(_ exampleShape: [Int]) {
        precondition(!exampleShape.isEmpty && exampleShape.allSatisfy { $0 >= 1 }, "Reshape needs extents >= 1")
        self.exampleShape = exampleShape
    }

    public func forward(_ input: Tensor) throws -> Tensor {
        guard input.rank >= 1, input.rowCount > 0, input.columnCount == exampleShape.reduce(1, *) else {
            throw KronfacError(.shape,
                "Reshape(\(exampleShape)) needs \(exampleShape.reduce(1, *)) values per example; got shape \(input.shape)")
        }
        lastInputShape = input.shape
        return input.reshapedUnchecked([input.rowCount] + exampleShape)
    }

    public func backward(_ outputGradient: Tensor, pass: BackwardPass) throws -> Tensor {
        guard let shape = lastInputShape else { throw KronfacError(.state, "Reshape.backward called before forward") }
        guard outputGradient.shape == [shape[0]] + exampleShape else {
            throw KronfacError(.shape,
                "Reshape output gradient has shape \(outputGradient.shape), expected \([shape[0]] + exampleShape)")
        }
        return outputGradient.reshapedUnchecked(shape)
    }
}
