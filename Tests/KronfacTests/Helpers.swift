import Foundation
import Testing
@testable import Kronfac

/// A tensor of seeded normal values times `scale`.
func randomTensor(_ shape: [Int], seed: UInt64, scale: Double = 1) -> Tensor {
    var generator = SeededGenerator(seed: seed)
    let count = shape.reduce(1, *)
    return try! Tensor(shape: shape, scalars: (0..<count).map { _ in Float(scale * generator.nextNormal()) })
}

/// One-hot rows of seeded random classes.
func randomOneHot(rows: Int, classes: Int, seed: UInt64) -> Tensor {
    var generator = SeededGenerator(seed: seed)
    return try! Dataset.oneHot((0..<rows).map { _ in generator.nextIndex(below: classes) }, classes: classes)
}

/// Whether `body` throws a KronfacError of `code` whose message contains every fragment.
func expectKronfacError(
    _ code: KronfacError.Code, mentioning fragments: [String] = [],
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected a KronfacError(\(code)), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as KronfacError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(error.message.lowercased().contains(fragment.lowercased()),
                    "message \"\(error.message)\" should mention \"\(fragment)\"", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected a KronfacError, got \(error)", sourceLocation: sourceLocation)
    }
}

/// A snapshot of every dense layer's parameters, for "nothing changed" checks.
func parameterSnapshot(_ model: Sequential) -> [Tensor] {
    model.linearMaps.flatMap { [$0.weight] + ($0.bias.map { [$0] } ?? []) }
}

func bitwiseEqual(_ a: [Tensor], _ b: [Tensor]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.isBitwiseEqual(to: $1) }
}

/// A temporary directory removed by the caller.
func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("kronfac-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
