#!/usr/bin/env bash
# The house's size rules, checked: no Rust source file over 700 lines outside
# tests (files under tests/, tests.rs, *_tests.rs; vendored third_party/ and
# build output excluded). Function length (100 lines of code outside tests) is
# clippy's too_many_lines lint, configured in the workspace Cargo.toml.
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
exit "$bad"
