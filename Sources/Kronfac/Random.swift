import Foundation

/// A seeded pseudo-random generator (xoshiro256**, seeded through SplitMix64).
///
/// Everything random in Kronfac (initialisation, shuffling, sampled targets, generated data) is
/// drawn from this generator with a fixed algorithm, so results are reproducible across runs and
/// platforms, and a training run can be resumed bit-exactly.
public struct SeededGenerator: RandomNumberGenerator, Equatable, Sendable {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    public init(seed: UInt64) {
        var mixer = seed
        s0 = SeededGenerator.splitMix(&mixer)
        s1 = SeededGenerator.splitMix(&mixer)
        s2 = SeededGenerator.splitMix(&mixer)
        s3 = SeededGenerator.splitMix(&mixer)
    }

    /// A generator for one purpose (a layer, an epoch, a step) derived from a run's seed, so that
    /// the streams of different purposes do not overlap and none depends on how many numbers
    /// another consumed.
    init(seed: UInt64, stream: UInt64, index: UInt64 = 0) {
        var mixer = seed ^ 0x6A09_E667_F3BC_C909
        var key = SeededGenerator.splitMix(&mixer)
        key ^= stream &* 0x9E37_79B9_7F4A_7C15
        var mixer2 = key
        key = SeededGenerator.splitMix(&mixer2) ^ (index &* 0xBF58_476D_1CE4_E5B9)
        self.init(seed: key)
    }

    private static func splitMix(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    mutating func nextUnit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    /// Uniform in [low, high).
    mutating func nextUniform(_ low: Double, _ high: Double) -> Double {
        low + (high - low) * nextUnit()
    }

    /// Standard normal (Box-Muller; one value per call keeps the stream position simple).
    mutating func nextNormal() -> Double {
        let u1 = 1.0 - nextUnit()  // (0, 1]: log stays finite
        let u2 = nextUnit()
        return (-2.0 * Foundation.log(u1)).squareRoot() * Foundation.cos(2.0 * Double.pi * u2)
    }

    /// Uniform integer in 0..<bound (Lemire's method without the rejection bias).
    mutating func nextIndex(below bound: Int) -> Int {
        precondition(bound > 0)
        let b = UInt64(bound)
        while true {
            let x = next()
            let (high, low) = x.multipliedFullWidth(by: b)
            if low >= (0 &- b) % b { return Int(high) }
        }
    }

    /// A uniformly random permutation of 0..<count (Fisher-Yates).
    mutating func permutation(of count: Int) -> [Int] {
        var result = Array(0..<count)
        if count < 2 { return result }
        for i in stride(from: count - 1, to: 0, by: -1) {
            let j = nextIndex(below: i + 1)
            result.swapAt(i, j)
        }
        return result
    }
}
