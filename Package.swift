// swift-tools-version:6.1
// Kronfac: the C core (compiled from the same sources as the CMake build), the Swift API and the
// `kronfac` command-line tool.
//
// The package trait MPI (off by default) adds distributed training over Open MPI:
//   swift build -c release --traits MPI --scratch-path .build-mpi
//   mpirun -np 2 .build-mpi/release/kronfac train --distributed ...
// Without it nothing needs or links MPI, and `kronfac train --distributed` says how to build it.
import PackageDescription

/// Swift code of the MPI build is under `#if KRONFAC_MPI`.
let mpiSwiftSettings: [SwiftSetting] = [.define("KRONFAC_MPI", .when(traits: ["MPI"]))]

let package = Package(
    name: "Kronfac",
    products: [
        .library(name: "Kronfac", targets: ["Kronfac"]),
        .executable(name: "kronfac", targets: ["kronfac"]),
    ],
    traits: [
        .trait(name: "MPI", description: "Distributed training over MPI (Open MPI, pkg-config ompi-c): "
               + "the kronfac_dist module and `kronfac train --distributed`."),
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
        // Open MPI (Debian: openmpi-bin libopenmpi-dev), for the trait MPI only.
        .systemLibrary(
            name: "CMPI",
            path: "Sources/CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev"])]
        ),
        // csrc/src/dist.c (the MPI module) and the few MPI calls Swift needs. SwiftPM compiles it
        // in every build; without the trait its files compile to nothing.
        .target(
            name: "CKronfacDist",
            dependencies: ["CKronfac", .target(name: "CMPI", condition: .when(traits: ["MPI"]))],
            path: "Sources/CKronfacDist",
            cSettings: [
                .headerSearchPath("../../csrc/dist"),
                .headerSearchPath("../../csrc/internal"),
                .define("KRONFAC_WITH_MPI", to: "1", .when(traits: ["MPI"])),
            ]
        ),
        .target(
            name: "Kronfac",
            dependencies: [
                "CKronfac", "CZlib",
                .target(name: "CKronfacDist", condition: .when(traits: ["MPI"])),
            ],
            path: "Sources/Kronfac",
            swiftSettings: mpiSwiftSettings
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
            path: "Sources/KronfacCLI",
            swiftSettings: mpiSwiftSettings
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
