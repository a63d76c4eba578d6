#!/usr/bin/env bash
# Fuzzes the hostile-input surfaces (issue 7) with cargo-fuzz/libFuzzer: the event decoder
# (`decode`) and the HTTP API driven in-process (`http_api`). Targets live in fuzz/.
#
#   bash scripts/fuzz.sh smoke   CI: a short bounded run of each target (FUZZ_SMOKE_SECS, default
#                                 30 s each) from the committed corpus; fails on any crash.
#   bash scripts/fuzz.sh long    FUZZ_RUNS (default 10,000,000) executions of each target, printing
#                                 libFuzzer's execution counts; the inputs it finds are kept under
#                                 fuzz/artifacts/long-<target>/ (git-ignored), not merged.
#   bash scripts/fuzz.sh build   just build the targets.
#
# Both modes use the same build (release with debug assertions and overflow checks, no
# sanitizer), so CI builds once. No sanitizer because the code under test is safe Rust: panics are
# what we hunt, and AddressSanitizer would halve throughput and lengthen the build.
# Installs the nightly toolchain and cargo-fuzz when missing (CI starts from a clean machine).
# New units found during a run go to a scratch directory, never into the repository unasked;
# crashing inputs land in fuzz/artifacts/<target>/ (git-ignored): copy them into the corpus once
# fixed, so they stay regression seeds.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-smoke}"
targets=(decode http_api)
build_flags=(--sanitizer none)
# The shared libFuzzer flags: one slow input is a bug too (10 s), and memory is bounded.
fuzz_flags=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

ensure_tools() {
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain (libFuzzer instrumentation needs it)"
    rustup toolchain install nightly --profile minimal
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
  fi
}

build() {
  local started=$SECONDS
  # The binaries are run from fuzz/target below, so a CARGO_TARGET_DIR meant for the main
  # build must not move them.
  (cd fuzz && env -u CARGO_TARGET_DIR cargo +nightly fuzz build "${build_flags[@]}")
  echo "fuzz: built targets in $((SECONDS - started)) s"
}

# run TARGET SCRATCH_DIR LIBFUZZER_ARGS...: new units go to SCRATCH_DIR (written first), the
# committed corpus is read as seeds. Prints libFuzzer's closing lines (the execution counts).
# Runs the binary `build` made rather than `cargo fuzz run`, which would rebuild first whenever a
# source file changed in between: one build, then exactly that build is fuzzed.
run_target() {
  local target="$1" scratch="$2"
  shift 2
  local log="$scratch.log"
  local host
  host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
  local bin="fuzz/target/$host/release/$target"
  mkdir -p "fuzz/artifacts/$target"
  echo "fuzz: $target: $bin ${fuzz_flags[*]} $*"
  if ! "$bin" "$scratch" "fuzz/corpus/$target" "${fuzz_flags[@]}" \
      "-artifact_prefix=fuzz/artifacts/$target/" "$@" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target FAILED (crash input in fuzz/artifacts/$target/)" >&2
    return 1
  fi
  grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)|^Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb' "$log" |
    sed "s/^/fuzz: $target: /"
}

scratch_root="$(mktemp -d)"
trap 'rm -rf "$scratch_root"' EXIT

case "$mode" in
  build)
    ensure_tools
    build
    ;;
  smoke)
    ensure_tools
    build
    for t in "${targets[@]}"; do
      mkdir -p "$scratch_root/$t"
      run_target "$t" "$scratch_root/$t" "-max_total_time=${FUZZ_SMOKE_SECS:-30}"
    done
    ;;
  long)
    ensure_tools
    build
    for t in "${targets[@]}"; do
      # Kept (git-ignored) rather than merged: a libFuzzer merge keeps every input with a new
      # feature, thousands after 10M runs. Fold in by hand the ones that add edges.
      found="$PWD/fuzz/artifacts/long-$t"
      mkdir -p "$found"
      started=$SECONDS
      run_target "$t" "$found" "-runs=${FUZZ_RUNS:-10000000}"
      echo "fuzz: $t: ${FUZZ_RUNS:-10000000} runs took $((SECONDS - started)) s; new units in $found"
    done
    ;;
  *)
    echo "usage: $0 smoke|long|build" >&2
    exit 2
    ;;
esac
