// libFuzzer entry point for the IDX reader (plain and gzip): any input must either parse into a
// consistent IDXFile or throw a KronfacError; a crash, a sanitizer report, a hang or a trap
// (Swift's overflow and bounds checks) is a bug. A parsed file must hold exactly the bytes its
// dimensions claim, and must parse again, identically, from its own re-encoding.
import Kronfac

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIDX(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let file = try? IDXFile(fileContents: bytes, name: "fuzz") else {
        return 0
    }
    var count = 1
    for d in file.dimensions {
        precondition(d >= 0, "negative dimension")
        count = count.multipliedReportingOverflow(by: d).partialValue
    }
    precondition(file.bytes.count == count, "payload size differs from the dimensions' product")
    // Re-encode as plain IDX (unsigned bytes) and parse again.
    var again: [UInt8] = [0, 0, 0x08, UInt8(file.dimensions.count)]
    for d in file.dimensions {
        let v = UInt32(truncatingIfNeeded: d)
        again += [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)]
    }
    again += file.bytes
    let second = try? IDXFile(fileContents: again, name: "fuzz-again")
    precondition(second != nil, "a parsed file's re-encoding does not parse")
    precondition(second!.dimensions == file.dimensions && second!.bytes == file.bytes,
                 "re-encoding changed the contents")
    return 0
}
