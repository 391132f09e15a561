internal import CKronfac

/// An error reported by Kronfac: a category and a message that names the problem.
///
/// Errors from the C core carry the core's own last-error message; errors found by the Swift
/// layer (shapes, files, data) use the same categories.
public struct KronfacError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The category of an error; the raw values are the C core's `kf_status` codes.
    public enum Code: Int32, Sendable, CaseIterable {
        case nullPointer = -1
        case invalidArgument = -2
        case shape = -3
        case outOfMemory = -4
        case nonFinite = -10
        case notPositiveDefinite = -11
        case noConvergence = -12
        case state = -20
        case format = -21
        case io = -22
        case unsupported = -23
        /// A status this version of the Swift layer does not know.
        case unknown = -1000
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

extension KronfacError {
    /// Wraps a failed C status and the message the handle recorded for it.
    init(status: kf_status, message: String) {
        let code = Code(rawValue: Int32(truncatingIfNeeded: status.rawValue)) ?? .unknown
        let fallback = String(cString: kf_status_string(status))
        self.init(code, message.isEmpty ? fallback : message)
    }
}

/// Facts about the compiled C core.
public enum CoreLibrary {
    /// "MAJOR.MINOR.PATCH" of the C core.
    public static var version: String { String(cString: kf_version()) }
    /// What was compiled in: backend, SIMD level, inverse routines.
    public static var buildInfo: String { String(cString: kf_build_info()) }
    /// Whether the core uses OpenBLAS (it does in the Swift package).
    public static var usesBLAS: Bool { kf_has_blas() != 0 }

    /// Sets OpenBLAS's thread count, which is shared by the whole process (the core's one
    /// global). Small models often run faster on one thread.
    public static func setBLASThreads(_ count: Int) throws {
        guard count >= 1, count <= Int(Int32.max) else {
            throw KronfacError(.invalidArgument, "BLAS thread count \(count) must be >= 1")
        }
        let status = kf_blas_set_threads(Int32(count))
        guard status == KF_OK else {
            throw KronfacError(status: status, message: "kf_blas_set_threads(\(count)) failed")
        }
    }
}
