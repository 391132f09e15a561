internal import CKronfac

/// Owns a `kf_context`, the handle the core's stateless kernels need (workspace, last error).
///
/// One per layer or loss user, created lazily: a context must be used by one thread at a time,
/// and objects that own their context can be used from different threads independently.
final class KernelContext {
    let handle: OpaquePointer

    init() throws {
        var raw: OpaquePointer?
        let status = kf_context_create(nil, &raw)
        guard status == KF_OK, let raw else {
            throw KronfacError(status: status, message: "kf_context_create failed")
        }
        handle = raw
    }

    deinit { kf_context_destroy(handle) }

    func check(_ status: kf_status) throws {
        guard status == KF_OK else {
            throw KronfacError(status: status, message: String(cString: kf_context_last_error(handle)))
        }
    }

    /// C (m x n) = alpha op(A) op(B) + beta C, all row-major and densely packed unless an ld says otherwise.
    func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Float, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) throws {
        try check(kf_gemm(
            handle, transposeA ? KF_TRANS : KF_NO_TRANS, transposeB ? KF_TRANS : KF_NO_TRANS,
            m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
    }
}
