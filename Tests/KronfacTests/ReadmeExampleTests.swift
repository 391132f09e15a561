import Foundation
import Testing
import Kronfac  // not @testable: the example uses the public API only

// The README's example, line for line (the README's version starts with
// `let checkpoint = "curves.kftrain"`); run here so that it keeps compiling and training.
private func readmeExample(checkpoint: String) throws -> Trainer {
    let (train, test) = try Curves.dataset(trainingCount: 2000, testCount: 500, seed: 1)
    let model = Sequential(seed: 42, Dense(784, 32), Tanh(), Dense(32, 784))
    let trainer = try Trainer(model: model, loss: SigmoidCrossEntropy(), optimizer: KFAC(), batchSize: 100)
    try trainer.fit(train, epochs: 3, validation: test) { print($0) }  // one line per epoch
    try trainer.save(to: checkpoint)  // a later run continues with trainer.restore(from:)
    return trainer
}

@Test("The README example compiles, trains and saves")
func readmeExampleRuns() throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: dir) }
    let checkpoint = dir.appendingPathComponent("curves.kftrain").path
    let trainer = try readmeExample(checkpoint: checkpoint)
    #expect(trainer.epoch == 3 && trainer.step == 60)
    #expect(FileManager.default.fileExists(atPath: checkpoint))
    let test = try Curves.dataset(trainingCount: 1, testCount: 500, seed: 1).test
    // Well below the mean-image plateau (about 176) after 60 K-FAC steps.
    #expect(try trainer.evaluate(test) < 170)
}

// The README's Fashion-MNIST example, line for line but for the number of steps (1500 there).
private func readmeFashionExample(steps: Int) throws {
    let base = "/usr/share/datasets/fashion-mnist/"
    let data = try MNIST.load(images: base + "train-images-idx3-ubyte.gz", labels: base + "train-labels-idx1-ubyte.gz")
    let mlp = Sequential(seed: 1,
        Dense(784, 1000, initialization: .he), ReLU(), Dense(1000, 1000, initialization: .he), ReLU(),
        Dense(1000, 1000, initialization: .he), ReLU(), Dense(1000, 10, initialization: .he))
    let foof = try FOOF(learningRate: 0.1, damping: 0.1, inverseInterval: 100, statisticsSubsample: 10)
    try Trainer(model: mlp, loss: SoftmaxCrossEntropy(), optimizer: foof, batchSize: 100, seed: 1)
        .fit(data, steps: steps, reportEvery: 100) { print($0) }
}

@Test("The README's Fashion-MNIST example compiles and takes its first steps (when the data is installed)")
func readmeFashionExampleRuns() throws {
    guard FileManager.default.fileExists(atPath: "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") else { return }
    try readmeFashionExample(steps: 2)
}

// The README's convolutional examples, line for line but for the number of steps (300 there).
private func readmeConvolutionExample(data: Dataset, steps: Int) throws -> Tensor {
    let cnn = Sequential(seed: 1,
        Reshape([1, 28, 28]), Conv2D(1, 16, kernelSize: 3, padding: 1), ReLU(), Pool2D(.average, kernelSize: 2),
        Conv2D(16, 32, kernelSize: 3, padding: 1), ReLU(), Pool2D(.average, kernelSize: 2),
        Flatten(), Dense(32 * 7 * 7, 128, initialization: .he), ReLU(), Dense(128, 10, initialization: .he))
    try Trainer(model: cnn, loss: SoftmaxCrossEntropy(), optimizer: try FOOF(learningRate: 0.1, damping: 0.1), batchSize: 100)
        .fit(data, steps: steps, reportEvery: 100) { print($0) }

    // A layer applied to each of 12 tokens of 16 features, averaged over the tokens before the loss.
    let tokens = Sequential(seed: 1, Dense(16, 32), Tanh(), SharedAxisPool(.average), Dense(32, 4))
    let logits = try tokens.forward(Tensor(shape: [8, 12, 16], repeating: 0.5))  // shape [8, 4]
    return logits
}

@Test("The README's convolution example compiles and trains (on generated 28x28 images)")
func readmeConvolutionExampleRuns() throws {
    let count = 200
    var generator = SeededGenerator(seed: 3)
    let labels = (0..<count).map { _ in Int.random(in: 0..<10, using: &generator) }
    // Class c lights row 2c + 4 of the image: a pattern the convolutions can find.
    let pixels = labels.flatMap { label in
        (0..<784).map { index -> Float in index / 28 == 2 * label + 4 ? 1 : Float.random(in: 0..<0.2, using: &generator) }
    }
    let data = try Dataset(inputs: Tensor(shape: [count, 784], scalars: pixels), targets: Dataset.oneHot(labels, classes: 10))
    let logits = try readmeConvolutionExample(data: data, steps: 4)
    #expect(logits.shape == [8, 4])
}
