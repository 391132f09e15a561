import Foundation
internal import CZlib

/// An IDX file of unsigned bytes (the MNIST format): big-endian dimensions and the payload.
///
/// Plain and gzip-compressed files are read alike (gzip is recognised by its magic bytes).
public struct IDXFile: Sendable {
    /// The extent of each dimension, outermost first.
    public let dimensions: [Int]
    /// The payload, row-major, `dimensions.reduce(1, *)` bytes.
    public let bytes: [UInt8]

    /// Reads and validates an IDX file.
    /// - Throws: `.io` when it cannot be read; `.format` when it is truncated, longer than its
    ///   header says, has a wrong magic number or an unsupported element type, or is corrupt gzip.
    public init(contentsOf path: String) throws {
        let raw: [UInt8]
        do {
            raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw KronfacError(.io, "cannot read \(path): \(error.localizedDescription)")
        }
        try self.init(fileContents: raw, name: path)
    }

    /// Parses the contents of an IDX file (plain or gzip); `name` appears in error messages.
    public init(fileContents: [UInt8], name: String) throws {
        let data = isGzip(fileContents) ? try gunzip(fileContents, name: name) : fileContents
        guard data.count >= 4 else {
            throw KronfacError(.format, "\(name): truncated IDX file: \(data.count) bytes, the header alone needs 4")
        }
        let magic = data[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard data[0] == 0, data[1] == 0 else {
            throw KronfacError(.format,
                "\(name): wrong magic number 0x\(hex(magic)); an IDX file starts with 0x0000 (MNIST images 0x00000803, labels 0x00000801)")
        }
        guard data[2] == 0x08 else {
            throw KronfacError(.format,
                "\(name): IDX element type 0x\(String(data[2], radix: 16)) (magic 0x\(hex(magic))) is not supported; only unsigned bytes (0x08) are")
        }
        let rank = Int(data[3])
        guard rank >= 1 else { throw KronfacError(.format, "\(name): IDX header declares 0 dimensions") }
        let headerSize = 4 + 4 * rank
        guard data.count >= headerSize else {
            throw KronfacError(.format,
                "\(name): truncated IDX header: \(rank) dimensions need \(headerSize) bytes, the file has \(data.count)")
        }
        var dimensions: [Int] = []
        var total = 1
        for d in 0..<rank {
            let start = 4 + 4 * d
            let extent = Int(data[start..<(start + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            let (product, overflow) = total.multipliedReportingOverflow(by: extent)
            guard !overflow else { throw KronfacError(.format, "\(name): IDX dimensions overflow") }
            total = product
            dimensions.append(extent)
        }
        let payload = data.count - headerSize
        guard payload >= total else {
            throw KronfacError(.format,
                "\(name): truncated IDX file: dimensions \(dimensions) need \(total) bytes of data, found \(payload)")
        }
        guard payload == total else {
            throw KronfacError(.format,
                "\(name): mis-sized IDX file: dimensions \(dimensions) need \(total) bytes of data, found \(payload) (\(payload - total) extra)")
        }
        self.dimensions = dimensions
        self.bytes = Array(data[headerSize...])
    }
}

private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

func isGzip(_ data: [UInt8]) -> Bool {
    data.count >= 2 && data[0] == 0x1F && data[1] == 0x8B
}

/// Decompresses gzip data (concatenated members included) with zlib.
func gunzip(_ compressed: [UInt8], name: String) throws -> [UInt8] {
    var stream = z_stream()
    // 16 + MAX_WBITS: expect a gzip wrapper.
    var status = inflateInit2_(&stream, 16 + 15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
    guard status == Z_OK else { throw KronfacError(.outOfMemory, "\(name): zlib could not start (\(status))") }
    defer { inflateEnd(&stream) }
    var output: [UInt8] = []
    output.reserveCapacity(compressed.count * 4)
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    try compressed.withUnsafeBufferPointer { input in
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress!)
        stream.avail_in = UInt32(input.count)
        while true {
            let produced: Int = chunk.withUnsafeMutableBufferPointer { out in
                stream.next_out = out.baseAddress!
                stream.avail_out = UInt32(out.count)
                status = inflate(&stream, Z_NO_FLUSH)
                return out.count - Int(stream.avail_out)
            }
            output.append(contentsOf: chunk[0..<produced])
            switch status {
            case Z_OK:
                continue
            case Z_STREAM_END:
                // Another gzip member may follow.
                if stream.avail_in == 0 { return }
                guard inflateReset(&stream) == Z_OK else {
                    throw KronfacError(.format, "\(name): corrupt gzip data after a member")
                }
            case Z_BUF_ERROR where stream.avail_in == 0:
                throw KronfacError(.format, "\(name): truncated gzip data (the compressed stream ends early)")
            default:
                let detail = stream.msg.map { String(cString: $0) } ?? "zlib status \(status)"
                throw KronfacError(.format, "\(name): corrupt gzip data: \(detail)")
            }
        }
    }
    return output
}

/// The MNIST format (also Fashion-MNIST): IDX images of 28 x 28 bytes and IDX labels.
public enum MNIST {
    /// Images as `[count, rows * columns]` scaled to [0, 1].
    /// - Throws: `.format` for a file that is not an IDX image file (magic 0x00000803).
    public static func loadImages(_ path: String) throws -> Tensor {
        let file = try IDXFile(contentsOf: path)
        guard file.dimensions.count == 3 else {
            throw KronfacError(.format,
                "\(path): wrong magic number: an image file has 3 dimensions (magic 0x00000803), this one has \(file.dimensions.count)")
        }
        let count = file.dimensions[0], pixels = file.dimensions[1] * file.dimensions[2]
        guard count > 0, pixels > 0 else { throw KronfacError(.shape, "\(path) holds no images") }
        let scalars = file.bytes.map { Float($0) / 255 }
        return try Tensor(shape: [count, pixels], scalars: scalars)
    }

    /// Labels 0...9 of an IDX label file (magic 0x00000801).
    public static func loadLabels(_ path: String) throws -> [Int] {
        let file = try IDXFile(contentsOf: path)
        guard file.dimensions.count == 1 else {
            throw KronfacError(.format,
                "\(path): wrong magic number: a label file has 1 dimension (magic 0x00000801), this one has \(file.dimensions.count)")
        }
        if let bad = file.bytes.firstIndex(where: { $0 > 9 }) {
            throw KronfacError(.format, "\(path): label \(file.bytes[bad]) of example \(bad) is not a digit 0...9")
        }
        return file.bytes.map(Int.init)
    }

    /// Images and one-hot labels (10 classes) as a data set.
    /// - Throws: the errors of `loadImages` and `loadLabels`; `.shape` when the counts differ.
    public static func load(images: String, labels: String) throws -> Dataset {
        let x = try loadImages(images)
        let y = try loadLabels(labels)
        guard y.count == x.rowCount else {
            throw KronfacError(.shape, "\(images) holds \(x.rowCount) images but \(labels) holds \(y.count) labels")
        }
        return try Dataset(inputs: x, targets: Dataset.oneHot(y, classes: 10))
    }
}
