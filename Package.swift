// swift-tools-version:6.0
// Kronfac: the C core (compiled from the same sources as the CMake build) and the Swift API.
import PackageDescription

let package = Package(
    name: "Kronfac",
    products: [
        .library(name: "Kronfac", targets: ["Kronfac"]),
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
        .testTarget(
            name: "KronfacTests",
            // CZlib: the tests write gzip files to read back.
            dependencies: ["Kronfac", "CZlib"],
            path: "Tests/KronfacTests"
        ),
    ],
    cLanguageStandard: .c99
)
