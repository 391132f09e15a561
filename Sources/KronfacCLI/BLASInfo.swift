import Foundation
import Kronfac
internal import COpenBLAS

/// What OpenBLAS runs on: the kernels it chose for this CPU and its thread count.
public enum BLASInfo {
    /// OpenBLAS's name of the kernels in use ("Haswell", "SkylakeX", "Prescott", ...).
    public static var coreName: String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name)
    }

    public static var threads: Int { Int(openblas_get_num_threads()) }

    /// "OpenBLAS core Haswell, 2 threads (OPENBLAS_CORETYPE=Haswell)".
    public static var summary: String {
        var text = "OpenBLAS core \(coreName), \(threads) thread\(threads == 1 ? "" : "s")"
        if let forced = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] {
            text += " (OPENBLAS_CORETYPE=\(forced))"
        }
        return text
    }

    /// The OpenBLAS kernels this CPU can run fastest: SkylakeX with AVX-512 (F, CD, BW, DQ, VL),
    /// Haswell with AVX2 and FMA, nil otherwise or off x86-64.
    public static var recommendedCore: String? {
        guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let flags = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return nil }
        let set = Set(flags.split(separator: " ").map(String.init))
        if ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(set.contains) { return "SkylakeX" }
        if set.contains("avx2") && set.contains("fma") { return "Haswell" }
        return nil
    }

    /// A hint when OpenBLAS fell back to its oldest x86-64 kernels on a CPU that has better ones
    /// (OpenBLAS 0.3.21 does this for CPUs newer than it knows), nil otherwise.
    public static var slowCoreHint: String? {
        guard coreName.lowercased() == "prescott",
              ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil,
              let core = recommendedCore
        else { return nil }
        return "note: OpenBLAS chose its generic Prescott kernels for this CPU; "
            + "OPENBLAS_CORETYPE=\(core) runs several times faster (scripts/demo sets it)"
    }

    /// Sets the BLAS thread count (the process-wide OpenBLAS setting).
    public static func setThreads(_ count: Int) throws {
        try CoreLibrary.setBLASThreads(count)
    }
}
