// swift-tools-version:6.0
// Kronfac: the C core (compiled from the same sources as the CMake build), the Swift API and the
// `kronfac` command-line tool.
import PackageDescription

let package = Package(
    name: "Kronfac",
    products: [
        .library(name: "Kronfac", targets: ["Kronfac"]),
        .executable(name: "kronfac", targets: ["kronfac"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // The C99 core. Both backends live in csrc/src and guard themselves with
        // KRONFAC_HAVE_BLAS, so compiling every file is exactly what CMake's BLAS build does.
        .target(
            name: "CKronfac",
            path: "csrc",
            exclude: ["tests"],
            sources: ["src"],
            publicHeadersPath: "include",
            cSettings: [
                .headerSearchPath("internal"),
                .define("KRONFAC_HAVE_BLAS", to: "1"),
            ],
            linkerSettings: [
                .linkedLibrary("openblas"),
                .linkedLibrary("m"),
            ]
        ),
        // zlib, for gzip-compressed IDX files (Debian: zlib1g-dev).
        .systemLibrary(
            name: "CZlib",
            path: "Sources/CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        .target(
            name: "Kronfac",
            dependencies: ["CKronfac", "CZlib"],
            path: "Sources/Kronfac"
        ),
        // OpenBLAS's own queries (the core it chose for this CPU, its threads) and raw sgemm,
        // the reference of `kronfac bench`.
        .systemLibrary(
            name: "COpenBLAS",
            path: "Sources/COpenBLAS",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // Flush-to-zero for the command line's training thread (a header-only C helper).
        .systemLibrary(
            name: "CFloatEnvironment",
            path: "Sources/CFloatEnvironment"
        ),
        // The command line's logic (options, data sources, the comparison runner, CSV, SVG,
        // tables, the benchmark), a library so that the tests reach it; `kronfac` only calls it.
        .target(
            name: "KronfacCLI",
            dependencies: [
                "Kronfac", "COpenBLAS", "CKronfac", "CFloatEnvironment",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/KronfacCLI"
        ),
        .executableTarget(
            name: "kronfac",
            dependencies: ["KronfacCLI"],
            path: "Sources/kronfac"
        ),
        .testTarget(
            name: "KronfacCLITests",
            // kronfac: the end-to-end tests run the built tool; CZlib writes gzip test files.
            dependencies: ["KronfacCLI", "Kronfac", "kronfac", "CZlib"],
            path: "Tests/KronfacCLITests"
        ),
        .testTarget(
            name: "KronfacTests",
            // CZlib: the tests write gzip files to read back.
            dependencies: ["Kronfac", "CZlib"],
            path: "Tests/KronfacTests"
        ),
    ],
    cLanguageStandard: .c99
)
