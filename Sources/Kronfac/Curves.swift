import Foundation

/// The `curves` data set of the deep-autoencoder benchmarks (after Hinton & Salakhutdinov 2006):
/// 28 x 28 grey images, each a smooth random curve through three random points, drawn with a
/// random stroke width and ink intensity. Generated deterministically from a seed.
///
/// Image `i` of a set depends only on `(seed, set, i)`, so sets of different sizes share their
/// first images and the training and test sets never share a stream.
public enum Curves {
    /// Images are `side x side` pixels.
    public static let side = 28

    /// `count` images as `[count, 784]` with pixel values in [0, 1].
    public static func images(count: Int, seed: UInt64, set: UInt64 = 0) -> Tensor {
        precondition(count >= 0, "count must be >= 0")
        let pixels = side * side
        var scalars = [Float](repeating: 0, count: count * pixels)
        scalars.withUnsafeMutableBufferPointer { buffer in
            for i in 0..<count {
                var generator = SeededGenerator(seed: seed, stream: 0x4375_7276_6573 &+ set, index: UInt64(i))  // "Curves"
                draw(into: buffer.baseAddress! + i * pixels, using: &generator)
            }
        }
        return Tensor(uncheckedShape: [count, pixels], scalars: scalars)
    }

    /// Training and test sets for an autoencoder (targets = inputs); the benchmark uses 20000
    /// training and 10000 test images.
    public static func dataset(
        trainingCount: Int = 20_000, testCount: Int = 10_000, seed: UInt64 = 0
    ) throws -> (training: Dataset, test: Dataset) {
        guard trainingCount >= 1, testCount >= 1 else {
            throw KronfacError(.invalidArgument,
                "trainingCount (\(trainingCount)) and testCount (\(testCount)) must be >= 1")
        }
        let training = images(count: trainingCount, seed: seed, set: 0)
        let test = images(count: testCount, seed: seed, set: 1)
        return (try Dataset(inputs: training, targets: training), try Dataset(inputs: test, targets: test))
    }

    /// Draws one curve: three points at least 5 px apart inside a 3 px margin, the parabola through
    /// them (parametrised by chord length, so it bends smoothly at the middle point), inked with a
    /// Gaussian profile across the stroke.
    private static func draw(into image: UnsafeMutablePointer<Float>, using generator: inout SeededGenerator) {
        let low = 3.0, high = Double(side) - 3.0
        var points: [(x: Double, y: Double)] = []
        while points.count < 3 {
            let p = (x: generator.nextUniform(low, high), y: generator.nextUniform(low, high))
            if let last = points.last, hypot(p.x - last.x, p.y - last.y) < 5 { continue }
            points.append(p)
        }
        let width = generator.nextUniform(0.6, 1.4)       // standard deviation of the ink across the stroke
        let intensity = generator.nextUniform(0.7, 1.0)
        let d1 = hypot(points[1].x - points[0].x, points[1].y - points[0].y)
        let d2 = hypot(points[2].x - points[1].x, points[2].y - points[1].y)
        let t1 = d1 / (d1 + d2)
        // Lagrange basis through t = 0, t1, 1.
        func point(_ t: Double) -> (x: Double, y: Double) {
            let l0 = (t - t1) * (t - 1) / t1
            let l1 = t * (t - 1) / (t1 * (t1 - 1))
            let l2 = t * (t - t1) / (1 - t1)
            return (l0 * points[0].x + l1 * points[1].x + l2 * points[2].x,
                    l0 * points[0].y + l1 * points[1].y + l2 * points[2].y)
        }
        let segments = 48
        var distance = [Double](repeating: .infinity, count: side * side)
        var previous = point(0)
        let reach = 3 * width
        for s in 1...segments {
            let current = point(Double(s) / Double(segments))
            let minX = max(0, Int((min(previous.x, current.x) - reach).rounded(.down)))
            let maxX = min(side - 1, Int((max(previous.x, current.x) + reach).rounded(.up)))
            let minY = max(0, Int((min(previous.y, current.y) - reach).rounded(.down)))
            let maxY = min(side - 1, Int((max(previous.y, current.y) + reach).rounded(.up)))
            if minX <= maxX && minY <= maxY {
                let dx = current.x - previous.x, dy = current.y - previous.y
                let length2 = dx * dx + dy * dy
                for py in minY...maxY {
                    for px in minX...maxX {
                        // Distance from the pixel centre to the segment.
                        let cx = Double(px) + 0.5, cy = Double(py) + 0.5
                        var u = length2 > 0 ? ((cx - previous.x) * dx + (cy - previous.y) * dy) / length2 : 0
                        u = min(1, max(0, u))
                        let ex = previous.x + u * dx - cx, ey = previous.y + u * dy - cy
                        let d = ex * ex + ey * ey
                        if d < distance[py * side + px] { distance[py * side + px] = d }
                    }
                }
            }
            previous = current
        }
        for i in 0..<(side * side) where distance[i].isFinite {
            let ink = intensity * exp(-distance[i] / (2 * width * width))
            image[i] = ink < 0.02 ? 0 : Float(min(1, ink))
        }
    }
}
