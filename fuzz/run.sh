#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on a stable
# toolchain (no sanitizer, so no nightly needed) and runs each for a while.
#
#   fuzz/run.sh                  every target, 25 s each
#   fuzz/run.sh --seconds 300    longer
#   fuzz/run.sh config postback  only these targets
#
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run; turn it into
# a regression test in the main crate. On nightly, `cargo fuzz run <target>` works too
# (with AddressSanitizer).
set -euo pipefail
cd "$(dirname "$0")"

seconds=25
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(postback offer_url click_id config reconcile_report h1_head)
fi

host=$(rustc -vV | sed -n 's/^host: //p')
# The flags cargo-fuzz passes, minus the sanitizer. `--target` keeps them away from
# build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$host" --bins

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" seeds/"$t"
    echo "== $t (${seconds}s)"
    if ! "target/$host/release/$t" "corpus/$t" "seeds/$t" -max_total_time="$seconds" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 -max_len=4096 2>"artifacts/$t.log"; then
        status=1
        echo "!! $t found a crash:"
        grep -E "panicked|SUMMARY|Test unit written" "artifacts/$t.log" || tail -20 "artifacts/$t.log"
    fi
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^Done" "artifacts/$t.log" || true
done
exit $status
