#!/usr/bin/env bash
# Builds the fuzz harnesses: fuzz/build.sh ROOT OUT
#   OUT/fuzz_<name>    libFuzzer + AddressSanitizer + UndefinedBehaviorSanitizer (when a clang with
#                      libFuzzer is found: $KF_FUZZ_CC, clang on PATH, the Swift toolchain's clang,
#                      or Debian's clang-14 with libclang-rt-14-dev, installed when missing)
#   OUT/replay_<name>  the same harness with a plain main() that replays files and directories
#                      (ASan + UBSan; built with any compiler), for corpora without libFuzzer.
# The library is compiled from csrc/src directly with the portable kernels: OpenBLAS is not
# instrumented and its own threads only add noise to the sanitizers.
# Prints "libfuzzer=yes" or "libfuzzer=no" as its last line.
set -euo pipefail
root=$1
out=$2
mkdir -p "$out/obj-fuzz" "$out/obj-replay"
harnesses="api checkpoint"

probe() { # probe CC FLAGS...: can CC build and link a libFuzzer target?
    local cc=$1; shift
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
        >"$out/probe.c"
    "$cc" "$@" "$out/probe.c" -o "$out/probe" >/dev/null 2>&1
}

cc=""
for c in ${KF_FUZZ_CC:-} clang /opt/swift/usr/bin/clang clang-14; do
    if command -v "$c" >/dev/null 2>&1 && probe "$c" -fsanitize=fuzzer,address,undefined; then
        cc=$c
        break
    fi
done
if [ -z "$cc" ] && [ -z "${KF_FUZZ_NO_INSTALL:-}" ]; then
    . "$root/scripts/deps.sh"
    if kf_need_packages clang-14 libclang-rt-14-dev >&2 && probe clang-14 -fsanitize=fuzzer,address,undefined; then
        cc=clang-14
    fi
fi
# Linking with lld when the compiler has it keeps ld.gold's warnings about ASan symbols away.
ldflag=""
if [ -n "$cc" ] && probe "$cc" -fuse-ld=lld -fsanitize=fuzzer,address,undefined; then
    ldflag=-fuse-ld=lld
fi

warn="-std=c99 -Wall -Wextra -Wpedantic -Werror ${KF_FUZZ_CFLAGS:-}"
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
inc="-I$root/csrc/include -I$root/csrc/internal"
replay_cc=${cc:-${CC:-cc}}

build_objs() { # build_objs DIR CC EXTRA_FLAGS...: the library's sources, two compilers at a time
    local dir=$1 c=$2; shift 2
    local flags="-std=c99 -O1 -g $san $* $inc"
    : >"$dir/list"
    for src in "$root"/csrc/src/*.c; do
        echo "$dir/$(basename "$src" .c).o" >>"$dir/list"
    done
    ls "$root"/csrc/src/*.c | xargs -P 2 -I{} sh -c \
        'o="$1/$(basename "$2" .c).o"; $3 $4 -c "$2" -o "$o"' _ "$dir" {} "$c" "$flags"
}

build_objs "$out/obj-replay" "$replay_cc"
for h in $harnesses; do
    "$replay_cc" $warn -O1 -g $san $ldflag $inc "$root/fuzz/fuzz_$h.c" "$root/fuzz/replay_main.c" \
        $(cat "$out/obj-replay/list") -lm -o "$out/replay_$h"
done
if [ -n "$cc" ]; then
    build_objs "$out/obj-fuzz" "$cc" -fsanitize=fuzzer-no-link
    for h in $harnesses; do
        "$cc" $warn -O1 -g $san -fsanitize=fuzzer $ldflag $inc "$root/fuzz/fuzz_$h.c" \
            $(cat "$out/obj-fuzz/list") -lm -o "$out/fuzz_$h"
    done
    echo "libfuzzer=yes ($cc)"
else
    echo "libfuzzer=no"
fi
