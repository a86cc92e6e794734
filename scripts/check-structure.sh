#!/usr/bin/env bash
# The house's size rules, checked: no Rust source file over 700 lines outside
# tests (files under tests/, tests.rs, *_tests.rs; vendored third_party/ and
# build output excluded), and no function over 100 lines outside tests:
# clippy's too_many_lines (threshold in clippy.toml) over libraries, binaries
# and examples, that is everything but test targets and #[cfg(test)] code.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=700
bad=0
while IFS= read -r f; do
  n=$(wc -l <"$f")
  if [ "$n" -gt "$limit" ]; then
    echo "check-structure: $f has $n lines (limit $limit outside tests): split it by concern" >&2
    bad=1
  fi
done < <(find protocol agent control-plane -name '*.rs' \
  -not -path '*/target/*' -not -path '*/tests/*' -not -path '*/fuzz/corpus/*' \
  -not -name 'tests.rs' -not -name '*_tests.rs' | sort)
[ "$bad" -eq 0 ] && echo "check-structure: no source file over $limit lines outside tests"
if cargo clippy --workspace --lib --bins --examples --locked -q -- -D warnings -D clippy::too_many_lines; then
  echo "check-structure: no function over 100 lines outside tests"
else
  echo "check-structure: functions over 100 lines outside tests (above): split them" >&2
  bad=1
fi
# The fuzz crate is its own workspace with its own lock file: a dependency
# added to one of the three crates must reach fuzz/Cargo.lock too, or the
# fuzz build (late in the test run) refuses to start.
if cargo metadata --manifest-path fuzz/Cargo.toml --locked --format-version 1 >/dev/null; then
  echo "check-structure: fuzz/Cargo.lock agrees with the crates it imports"
else
  echo "check-structure: fuzz/Cargo.lock is stale: run 'cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null' and commit it" >&2
  bad=1
fi
exit "$bad"
