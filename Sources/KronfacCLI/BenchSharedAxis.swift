import Foundation
import Kronfac
internal import CKronfac
internal import COpenBLAS

// The parts of `kronfac bench` beyond the kernel and step tables: the forward and backward passes
// of the Swift layer against sgemm at the same products, and K-FAC-expand against K-FAC-reduce.

extension Benchmark {
    /// Table (c): the forward and backward passes of the Swift layer (dense products, activations,
    /// loss gradient), at the counted flops of their products, against cblas_sgemm on the same
    /// products: forward Y = X W^T and backward dX = G W for every layer, 4 n out in flops.
    func passTable() throws -> [String] {
        let task: TrainingTask = widths.count >= 3 && widths.first == widths.last ? .autoencoder : .classify
        let configuration = RunConfiguration(
            data: .curves, task: task, widths: widths, activation: Defaults.activation(task), bias: true,
            batchSize: batch, seed: 1, optimizers: [], hyperparameters: [:], evalExamples: 1)
        let model = configuration.makeModel(), loss = configuration.makeLoss()
        var generator = SeededGenerator(seed: 12)
        let x = try Tensor(shape: [batch, widths[0]], scalars: (0..<(batch * widths[0])).map { _ in Float(generator.next() >> 40) / Float(1 << 24) })
        let target = task == .autoencoder
            ? x : try Dataset.oneHot((0..<batch).map { _ in Int(generator.next() % UInt64(widths.last!)) }, classes: widths.last!)
        let flops = shapes.reduce(0.0) { $0 + 4 * Double(batch * $1.out * $1.in) }
        let ours = try time {
            let output = try model.forward(x)
            _ = try model.backward(try loss.gradient(output, target: target))
        }
        let maximum = shapes.map { batch * max($0.out, $0.in) }.max()!
        var y = [Float](repeating: 0, count: maximum)
        let data = shapes.map { (x: [Float](repeating: 0.5, count: batch * $0.in), w: [Float](repeating: 0.01, count: $0.out * $0.in),
                                 g: [Float](repeating: 0.1, count: batch * $0.out)) }
        let reference = time {
            y.withUnsafeMutableBufferPointer { c in
                for (s, d) in zip(shapes, data) {
                    let m = Int32(batch), o = Int32(s.out), i = Int32(s.in)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, o, i, 1, d.x, i, d.w, i, 0, c.baseAddress, o)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, i, o, 1, d.g, o, d.w, i, 0, c.baseAddress, i)
                }
            }
        }
        let oursRate = Spread(ours.map { flops / $0 / 1e9 }), referenceRate = Spread(reference.map { flops / $0 / 1e9 })
        return [
            [pad("passes (Swift layer)", 28), padLeft("ms", 22), padLeft("GFLOP/s", 22), padLeft("sgemm GFLOP/s", 22),
             padLeft("ratio", 6)].joined(separator: "  "),
            [pad("forward + backward", 28), padLeft(Spread(ours).format(2, scale: 1000), 22), padLeft(oursRate.format(1), 22),
             padLeft(referenceRate.format(1), 22), padLeft(String(format: "%.2f", oursRate.median / referenceRate.median), 6)]
                .joined(separator: "  "),
        ]
    }
}

/// Table (d): one statistics step of a layer with a shared axis, K-FAC-expand against K-FAC-reduce
/// (Eschenhagen et al. 2023: reduce aggregates over the axis first, so its products are per
/// example): the activation and gradient factors through kf_activation_factor and
/// kf_gradient_factor, at the sizes of benchmarks/bench_shared.c.
struct SharedAxisBenchmark {
    let repeats: Int

    struct Layer {
        var name: String
        var examples: Int, positions: Int, inputs: Int, outputs: Int
    }

    static let layers = [
        Layer(name: "conv 3x3 64->64, 32x32, batch 32", examples: 32, positions: 1024, inputs: 576, outputs: 64),
        Layer(name: "sequence 768->768, 512 tokens, batch 16", examples: 16, positions: 512, inputs: 768, outputs: 768),
    ]

    func table() throws -> [String] {
        var context: OpaquePointer?
        guard kf_context_create(nil, &context) == KF_OK, let context else { throw CLIError("kf_context_create failed") }
        defer { kf_context_destroy(context) }
        let timer = Benchmark(widths: [1, 1], batch: 1, repeats: repeats)
        var lines = [[pad("statistics (A and G)", 40), padLeft("expand ms", 22), padLeft("reduce ms", 22), padLeft("ratio", 6),
                      "  memory MiB: rows read; added by reduce"].joined(separator: "  ")]
        for layer in Self.layers {
            let (n, r, d, o) = (layer.examples, layer.positions, layer.inputs, layer.outputs)
            let x = (0..<(n * r * d)).map { Float(($0 &* 2_654_435_761) % 2000) / 1000 - 1 }
            let g = (0..<(n * r * o)).map { Float(($0 &* 2_246_822_519) % 2000) / 1000 - 1 }
            var a = [Float](repeating: 0, count: (d + 1) * (d + 1)), gf = [Float](repeating: 0, count: o * o)
            func run(_ mode: kf_shared_mode) throws -> [Double] {
                var status = KF_OK
                let samples = timer.time {
                    let s1 = kf_activation_factor(context, n, r, d, x, d, 1, mode, &a, d + 1)
                    let s2 = kf_gradient_factor(context, n, r, o, g, o, mode, mode == KF_SHARED_EXPAND ? r : 1, 1, &gf, o)
                    if s1 != KF_OK { status = s1 } else if s2 != KF_OK { status = s2 }
                }
                guard status == KF_OK else { throw CLIError("factor failed: \(String(cString: kf_context_last_error(context)))") }
                return samples
            }
            let expand = Spread(try run(KF_SHARED_EXPAND)), reduce = Spread(try run(KF_SHARED_REDUCE))
            let rows = Double(n * r * (d + o) * 4) / 1_048_576, added = Double(n * (d + 1 + o) * 4) / 1_048_576
            lines.append([pad(layer.name, 40), padLeft(expand.format(2, scale: 1000), 22), padLeft(reduce.format(2, scale: 1000), 22),
                          padLeft(String(format: "%.1f", expand.median / reduce.median), 6),
                          String(format: "  %.1f; %.2f", rows, added)].joined(separator: "  "))
        }
        return lines
    }
}
