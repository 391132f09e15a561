// swift-tools-version:6.0
// The IDX reader's fuzz harness: a libFuzzer entry point over Kronfac's IDXFile parser.
// Built by fuzz/swift/build.sh with `swift build --sanitize=fuzzer --sanitize=address`;
// -parse-as-library keeps Swift from emitting a main(), so libFuzzer's is used.
import PackageDescription

let package = Package(
    name: "KronfacFuzzIDX",
    dependencies: [
        .package(name: "Kronfac", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "fuzz_idx",
            dependencies: [.product(name: "Kronfac", package: "Kronfac")],
            path: "Sources/fuzz_idx",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ]
)
