import Foundation
import Kronfac

/// `kronfac train --distributed`: data-parallel training over MPI. Every process loads the same
/// data with the same seed, so the models start identical and the mini-batches are the same; each
/// trains on its contiguous part of every batch, and the optimizers' distributed step
/// (kronfac_dist) keeps the models identical. Only rank 0 prints and writes the log, the plot
/// and the checkpoints.
public enum DistributedTraining {
    /// How this process takes part in a distributed run.
    public struct Role: Sendable, Equatable {
        public var rank: Int
        public var ranks: Int
        public var isRoot: Bool { rank == 0 }

        public init(rank: Int, ranks: Int) {
            self.rank = rank
            self.ranks = ranks
        }
    }

    /// Whether this build has the MPI trait.
    public static var isAvailable: Bool {
        #if KRONFAC_MPI
        return true
        #else
        return false
        #endif
    }

    static let buildHint = "this kronfac was built without MPI; build it with the package trait MPI "
        + "(apt-get install openmpi-bin libopenmpi-dev; swift build -c release --traits MPI --scratch-path .build-mpi) "
        + "and run it as: mpirun -np 2 .build-mpi/release/kronfac train --distributed ..."

    /// Starts MPI and returns this process's role.
    public static func start() throws -> Role {
        #if KRONFAC_MPI
        let processes = try MPIProcesses.start()
        return Role(rank: processes.rank, ranks: processes.count)
        #else
        throw CLIError("--distributed: " + buildHint)
        #endif
    }

    /// Finalises MPI (after every trainer is gone).
    public static func finish() {
        #if KRONFAC_MPI
        MPIProcesses.finish()
        #endif
    }

    /// A failure on one process must end all of them (the others would wait in the next collective
    /// step): prints the error with the rank and aborts the job.
    public static func abort(_ role: Role, message: String) -> Never {
        FileHandle.standardError.write(Data("kronfac: error (rank \(role.rank) of \(role.ranks)): \(message)\n".utf8))
        #if KRONFAC_MPI
        MPIProcesses.abort(status: 1)
        #else
        exit(1)
        #endif
    }

    /// Checks that every mini-batch, the last of an epoch included, has an example for every process.
    static func checkBatches(_ role: Role, trainingCount: Int, batchSize: Int) throws {
        let last = trainingCount % batchSize
        guard batchSize >= role.ranks, last == 0 || last >= role.ranks else {
            throw CLIError("--distributed on \(role.ranks) processes needs at least \(role.ranks) examples in every "
                + "mini-batch; batch \(batchSize) over \(trainingCount) training examples leaves a last batch of "
                + "\(last == 0 ? batchSize : last) (choose another --batch-size)")
        }
    }

    /// Makes the trainer take its part of every batch and its optimizer step with all processes.
    static func attach(_ trainer: Trainer, role: Role) throws {
        #if KRONFAC_MPI
        try trainer.setBatchShare(rank: role.rank, ranks: role.ranks)
        try trainer.optimizer.distribute(mode: .inverses)
        #else
        throw CLIError("--distributed: " + buildHint)
        #endif
    }
}
