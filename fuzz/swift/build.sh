#!/usr/bin/env bash
# Builds the IDX reader's libFuzzer harness (Swift): fuzz/swift/build.sh ROOT OUT -> OUT/fuzz_idx.
# SwiftPM builds Kronfac (Swift + the C core) with AddressSanitizer and libFuzzer's coverage in a
# scratch folder under OUT, so it does not touch the main build.
set -euo pipefail
root=$1
out=$2
mkdir -p "$out"
scratch=$out/swift-build
(cd "$root/fuzz/swift" && swift build --scratch-path "$scratch" --sanitize=fuzzer --sanitize=address -j 2) \
    >"$out/swift-build.log" 2>&1 || { grep -v "ld.gold: warning" "$out/swift-build.log" | tail -n 40; exit 1; }
cp "$scratch/debug/fuzz_idx" "$out/fuzz_idx"
echo "fuzz_idx: built ($out/fuzz_idx)"
