import Kronfac

/// One optimizer's settings in a comparison.
public struct Hyperparameters: Codable, Equatable, Sendable {
    public var learningRate: Double
    public var momentum: Double
    /// FOOF, K-FAC, EKFAC only.
    public var damping: Double?
    /// Steps between inverse refreshes (second-order optimizers only).
    public var inverseInterval: Int?
    /// Statistics only on the S steps before each refresh; 0 = every step (second-order only).
    public var statisticsSubsample: Int?

    public init(learningRate: Double, momentum: Double = 0, damping: Double? = nil,
                inverseInterval: Int? = nil, statisticsSubsample: Int? = nil) {
        self.learningRate = learningRate
        self.momentum = momentum
        self.damping = damping
        self.inverseInterval = inverseInterval
        self.statisticsSubsample = statisticsSubsample
    }

    /// The optimizer of these settings (Adam's betas and epsilon, the factor decay 0.95 and the
    /// Fisher type are the library's defaults).
    public func makeOptimizer(_ kind: OptimizerKind) throws -> Optimizer {
        let lr = Float(learningRate), mu = Float(momentum)
        switch kind {
        case .sgd: return try SGD(learningRate: lr, momentum: mu)
        case .adam: return try Adam(learningRate: lr)
        case .foof:
            return try FOOF(learningRate: lr, damping: Float(damping ?? 0.3), momentum: mu,
                            inverseInterval: inverseInterval ?? 20, statisticsSubsample: statisticsSubsample ?? 0)
        case .kfac:
            return try KFAC(learningRate: lr, damping: Float(damping ?? 0.1), momentum: mu,
                            inverseInterval: inverseInterval ?? 20, statisticsSubsample: statisticsSubsample ?? 0)
        case .ekfac:
            return try EKFAC(learningRate: lr, damping: Float(damping ?? 0.1), momentum: mu,
                             inverseInterval: inverseInterval ?? 20, statisticsSubsample: statisticsSubsample ?? 0)
        }
    }

    /// "lr 0.3, damping 0.3, T=100, S=10".
    public var summary: String {
        var parts = ["lr \(format(learningRate))"]
        if let damping { parts.append("damping \(format(damping))") }
        if momentum != 0 { parts.append("momentum \(format(momentum))") }
        if let inverseInterval { parts.append("T=\(inverseInterval)") }
        if let s = statisticsSubsample, s > 0 { parts.append("S=\(s)") }
        return parts.joined(separator: ", ")
    }

    private func format(_ x: Double) -> String {
        x == x.rounded() && abs(x) < 1e6 ? String(Int(x)) : "\(x)"
    }
}

/// The command line's defaults per task, chosen by the sweep in benchmarks/sweep.sh (results in
/// benchmarks/README.md, "Default hyperparameters").
public enum Defaults {
    /// The FOOF paper's Fig. 1A network (hidden widths; input and output follow the data).
    public static let classifierHidden = [1000, 1000, 1000]
    /// The deep-autoencoder benchmark's encoder (Hinton & Salakhutdinov 2006); mirrored.
    public static let autoencoderEncoder = [784, 1000, 500, 250, 30]

    public static let optimizers: [OptimizerKind] = [.foof, .kfac, .adam, .sgd]

    public static func batchSize(_ task: TrainingTask) -> Int {
        switch task {
        case .classify: return 100
        case .autoencoder: return 500
        }
    }

    /// About four minutes for the four optimizers on two cores (scripts/demo).
    public static func steps(_ task: TrainingTask) -> Int {
        switch task {
        case .classify: return 1500
        case .autoencoder: return 600
        }
    }

    /// The fixed training subset (and test subset) evaluated at every logged step.
    public static let evalExamples = 2000

    public static func activation(_ task: TrainingTask) -> ActivationChoice {
        task == .classify ? .relu : .tanh
    }

    /// Second-order optimizers refresh their inverses every `inverseInterval` steps and take
    /// statistics on the `statisticsSubsample` steps before each refresh.
    public static let inverseInterval = 100
    public static let statisticsSubsample = 10

    public static func hyperparameters(_ kind: OptimizerKind, task: TrainingTask) -> Hyperparameters {
        let t = inverseInterval, s = statisticsSubsample
        switch (task, kind) {
        case (.classify, .sgd): return Hyperparameters(learningRate: 0.03, momentum: 0.9)
        case (.classify, .adam): return Hyperparameters(learningRate: 1e-3)
        case (.classify, .foof):
            return Hyperparameters(learningRate: 0.1, damping: 0.1, inverseInterval: t, statisticsSubsample: s)
        case (.classify, .kfac), (.classify, .ekfac):
            return Hyperparameters(learningRate: 0.01, damping: 0.01, inverseInterval: t, statisticsSubsample: s)
        case (.autoencoder, .sgd): return Hyperparameters(learningRate: 0.01, momentum: 0.5)
        case (.autoencoder, .adam): return Hyperparameters(learningRate: 1e-3)
        case (.autoencoder, .foof):
            return Hyperparameters(learningRate: 0.1, momentum: 0.5, damping: 10, inverseInterval: t, statisticsSubsample: s)
        case (.autoencoder, .kfac), (.autoencoder, .ekfac):
            return Hyperparameters(learningRate: 0.03, momentum: 0.5, damping: 3, inverseInterval: t, statisticsSubsample: s)
        }
    }
}
