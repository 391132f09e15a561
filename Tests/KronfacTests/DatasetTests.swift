import CZlib
import Foundation
import Testing
@testable import Kronfac

/// gzip-compresses bytes with zlib (the library only reads gzip).
private func gzip(_ bytes: [UInt8]) -> [UInt8] {
    var stream = z_stream()
    precondition(deflateInit2_(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY,
                               ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK)
    defer { deflateEnd(&stream) }
    var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(bytes.count))) + 64)
    var input = bytes
    let produced = input.withUnsafeMutableBufferPointer { inp in
        output.withUnsafeMutableBufferPointer { out in
            stream.next_in = inp.baseAddress
            stream.avail_in = UInt32(inp.count)
            stream.next_out = out.baseAddress
            stream.avail_out = UInt32(out.count)
            precondition(deflate(&stream, Z_FINISH) == Z_STREAM_END)
            return out.count - Int(stream.avail_out)
        }
    }
    return Array(output.prefix(produced))
}

/// An IDX file of unsigned bytes.
private func idx(_ dimensions: [Int], _ payload: [UInt8], magic: [UInt8]? = nil) -> [UInt8] {
    var bytes = magic ?? [0, 0, 0x08, UInt8(dimensions.count)]
    for d in dimensions { bytes += [UInt8(d >> 24 & 0xFF), UInt8(d >> 16 & 0xFF), UInt8(d >> 8 & 0xFF), UInt8(d & 0xFF)] }
    return bytes + payload
}

private func write(_ bytes: [UInt8], _ name: String, in directory: URL) throws -> String {
    let url = directory.appendingPathComponent(name)
    try Data(bytes).write(to: url)
    return url.path
}

@Suite("Data sets")
struct DatasetTests {
    // Three 2 x 2 images and their labels.
    let pixels: [UInt8] = [0, 255, 51, 102, 255, 255, 0, 0, 1, 2, 3, 4]
    let labels: [UInt8] = [7, 0, 9]

    @Test("MNIST IDX files, plain and gzip, read alike", arguments: [false, true])
    func mnistRoundTrip(compressed: Bool) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        var images = idx([3, 2, 2], pixels), labelBytes = idx([3], labels)
        if compressed { images = gzip(images); labelBytes = gzip(labelBytes) }
        let data = try MNIST.load(images: write(images, "images", in: dir), labels: write(labelBytes, "labels", in: dir))
        #expect(data.count == 3)
        #expect(data.inputs.shape == [3, 4])
        #expect(data.inputs.scalars == pixels.map { Float($0) / 255 })
        #expect(data.targets.shape == [3, 10])
        #expect(data.targets[0, 7] == 1 && data.targets[1, 0] == 1 && data.targets[2, 9] == 1)
        #expect(data.targets.scalars.reduce(0, +) == 3)
    }

    @Test("Corrupt IDX files are refused with a message naming the problem")
    func corruptIDX() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let good = idx([3, 2, 2], pixels)
        let cases: [(String, [UInt8], [String])] = [
            ("empty", [], ["truncated"]),
            ("short header", [0, 0, 8], ["truncated"]),
            ("truncated dimensions", Array(good.prefix(9)), ["truncated", "header"]),
            ("truncated data", Array(good.dropLast(3)), ["truncated", "12", "9"]),
            ("extra bytes", good + [1, 2], ["mis-sized", "2 extra"]),
            ("wrong magic", idx([3, 2, 2], pixels, magic: [0x12, 0x34, 0x08, 3]), ["magic", "12340803"]),
            ("float elements", idx([3, 2, 2], pixels, magic: [0, 0, 0x0D, 3]), ["type", "0xd"]),
            ("truncated gzip", Array(gzip(good).prefix(20)), ["truncated gzip"]),
            ("corrupt gzip", [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3] + [UInt8](repeating: 0xFF, count: 40), ["gzip"]),
        ]
        for (name, bytes, fragments) in cases {
            let path = try write(bytes, name, in: dir)
            expectKronfacError(.format, mentioning: [path] + fragments) { _ = try MNIST.loadImages(path) }
        }
        // A label file read as images, an image file read as labels: the magic says which it is.
        let labelPath = try write(idx([3], labels), "labels", in: dir)
        expectKronfacError(.format, mentioning: ["0x00000803"]) { _ = try MNIST.loadImages(labelPath) }
        let imagePath = try write(good, "images", in: dir)
        expectKronfacError(.format, mentioning: ["0x00000801"]) { _ = try MNIST.loadLabels(imagePath) }
        // Labels that are not digits, and counts that disagree.
        let badLabels = try write(idx([3], [1, 2, 10]), "bad-labels", in: dir)
        expectKronfacError(.format, mentioning: ["label 10", "example 2"]) { _ = try MNIST.loadLabels(badLabels) }
        let twoLabels = try write(idx([2], [1, 2]), "two-labels", in: dir)
        expectKronfacError(.shape, mentioning: ["3 images", "2 labels"]) {
            _ = try MNIST.load(images: imagePath, labels: twoLabels)
        }
        expectKronfacError(.io, mentioning: ["missing"]) { _ = try MNIST.loadImages(dir.appendingPathComponent("missing").path) }
    }

    @Test("Fashion-MNIST from Debian's dataset-fashion-mnist, when installed")
    func fashionMNIST() throws {
        let base = "/usr/share/datasets/fashion-mnist/"
        guard FileManager.default.fileExists(atPath: base + "t10k-images-idx3-ubyte.gz") else { return }
        let test = try MNIST.load(images: base + "t10k-images-idx3-ubyte.gz", labels: base + "t10k-labels-idx1-ubyte.gz")
        #expect(test.inputs.shape == [10_000, 784])
        #expect(test.inputs.scalars.min() == 0 && test.inputs.scalars.max() == 1)
        // The test set is balanced: 1000 examples per class.
        var perClass = [Float](repeating: 0, count: 10)
        for r in 0..<test.count { for c in 0..<10 { perClass[c] += test.targets[r, c] } }
        #expect(perClass == [Float](repeating: 1000, count: 10))
    }

    @Test("CSV: header detection, target columns, class labels")
    func csv() throws {
        let text = "x1, x2 ,label\r\n1.5,2,1\n-3,4e-1,0\n\n0,0,2\n"
        let (header, values) = try CSV.parse(text)
        #expect(header == ["x1", "x2", "label"])
        #expect(values == (try Tensor(rows: [[1.5, 2, 1], [-3, 0.4, 0], [0, 0, 2]])))
        let (noHeader, numbers) = try CSV.parse("1,2\n3,4\n")
        #expect(noHeader == nil && numbers.shape == [2, 2])

        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("data.csv").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let classes = try CSV.dataset(path, classes: 3)
        #expect(classes.inputs == (try Tensor(rows: [[1.5, 2], [-3, 0.4], [0, 0]])))
        #expect(classes.targets == (try Tensor(rows: [[0, 1, 0], [1, 0, 0], [0, 0, 1]])))
        let regression = try CSV.dataset(path, targetColumns: [0])
        #expect(regression.targets == (try Tensor(rows: [[1.5], [-3], [0]])))
        #expect(regression.inputs.shape == [3, 2])
    }

    @Test("CSV errors name the line and column")
    func csvErrors() throws {
        expectKronfacError(.format, mentioning: ["line 3", "2 fields", "expected 3"]) { _ = try CSV.parse("a,b,c\n1,2,3\n4,5\n") }
        expectKronfacError(.format, mentioning: ["line 2", "column 2", "\"x\""]) { _ = try CSV.parse("1,2\n3,x\n") }
        expectKronfacError(.format, mentioning: ["line 1", "nan"]) { _ = try CSV.parse("nan,1\n", hasHeader: false) }
        expectKronfacError(.shape, mentioning: ["no data"]) { _ = try CSV.parse("\n\n") }
        expectKronfacError(.shape, mentioning: ["header but no data"]) { _ = try CSV.parse("a,b\n") }
        expectKronfacError(.format, mentioning: ["class label 2.5"]) {
            _ = try CSV.dataset(try CSV.parse("1,2.5\n").values, targetColumns: nil, classes: 3, name: "t")
        }
        expectKronfacError(.invalidArgument, mentioning: ["target columns"]) {
            _ = try CSV.dataset(try CSV.parse("1,2\n").values, targetColumns: [2], classes: nil, name: "t")
        }
        expectKronfacError(.io) { _ = try CSV.read("/nonexistent/kronfac.csv") }
    }

    @Test("curves: deterministic 28 x 28 images of one smooth stroke each")
    func curves() throws {
        let a = Curves.images(count: 50, seed: 5)
        let b = Curves.images(count: 50, seed: 5)
        #expect(a.shape == [50, 784])
        #expect(a.isBitwiseEqual(to: b))
        #expect(Curves.images(count: 10, seed: 5) == a.rows(0..<10))  // image i does not depend on count
        #expect(Curves.images(count: 50, seed: 6) != a)
        #expect(a.scalars.allSatisfy { $0 >= 0 && $0 <= 1 })
        for i in 0..<50 {
            let image = a.rows(i..<(i + 1)).scalars
            let inked = image.filter { $0 > 0.5 }.count
            // A stroke: clearly visible, yet most of the image is background.
            #expect(inked >= 10 && inked <= 300, "image \(i) has \(inked) inked pixels")
            #expect(image.max()! >= 0.6)
        }
        let (training, test) = try Curves.dataset(trainingCount: 30, testCount: 20, seed: 5)
        #expect(training.count == 30 && test.count == 20)
        #expect(training.targets == training.inputs)
        for i in 0..<20 { #expect(!(0..<30).contains { training.inputs.rows($0..<($0 + 1)) == test.inputs.rows(i..<(i + 1)) }) }
        expectKronfacError(.invalidArgument) { _ = try Curves.dataset(trainingCount: 0, testCount: 1) }
    }

    @Test("Data sets: subsets, seeded splits and their errors")
    func datasets() throws {
        let x = randomTensor([10, 3], seed: 1)
        let data = try Dataset(inputs: x, targets: x)
        let (a, b) = try data.split(trainingCount: 7, seed: 3)
        #expect(a.count == 7 && b.count == 3)
        let (c, _) = try data.split(trainingCount: 7, seed: 3)
        #expect(a.inputs == c.inputs)
        #expect(Set(a.inputs.scalars + b.inputs.scalars) == Set(x.scalars))
        expectKronfacError(.shape, mentioning: ["10 examples", "9"]) { _ = try Dataset(inputs: x, targets: randomTensor([9, 1], seed: 1)) }
        expectKronfacError(.shape, mentioning: ["at least one example"]) { _ = try Dataset(inputs: Tensor(shape: [0, 3]), targets: Tensor(shape: [0, 3])) }
        expectKronfacError(.invalidArgument) { _ = try data.split(trainingCount: 10) }
        expectKronfacError(.invalidArgument, mentioning: ["12"]) { _ = try data.subset([1, 12]) }
        expectKronfacError(.invalidArgument, mentioning: ["label 4"]) { _ = try Dataset.oneHot([1, 4], classes: 3) }
    }

    @Test("Tensors: shapes are validated, rows gathered in order")
    func tensors() throws {
        expectKronfacError(.shape, mentioning: ["[2, 3]", "6", "5"]) { _ = try Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5]) }
        expectKronfacError(.shape) { _ = try Tensor(shape: [], scalars: []) }
        expectKronfacError(.shape, mentioning: ["row 1"]) { _ = try Tensor(rows: [[1, 2], [3]]) }
        let t = try Tensor(rows: [[1, 2], [3, 4], [5, 6]])
        #expect(t.gatheringRows([2, 0, 2]).scalars == [5, 6, 1, 2, 5, 6])
        #expect(t[1, 0] == 3 && t.rowCount == 3 && t.columnCount == 2)
        expectKronfacError(.shape) { _ = try t.reshaped(to: [4, 2]) }
        #expect(try t.reshaped(to: [2, 3]).shape == [2, 3])
        #expect(t.isFinite)
        var u = t
        u[0, 0] = .nan
        #expect(!u.isFinite && t.isFinite)  // value semantics
    }
}
