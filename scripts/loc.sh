#!/usr/bin/env bash
# scripts/loc.sh: non-test Rust lines per workspace package, and the daemon's share.
#
#   bash scripts/loc.sh
#
# Counts the lines of every *.rs file under each package's src/ (tests/ directories are not
# counted), without `#[cfg(test)] mod … { … }` blocks and without the files that are only a
# test module (`#[cfg(test)] mod tests;`, e.g. enforcer/src/plan/tests.rs). Blank lines and
# comments count, as in `wc -l`. The last line is the share of the daemon package (`src/`):
# of the whole workspace (the acceptance's measure), and of the product crates alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# package name <TAB> its directory, for the root package and every member with a Cargo.toml.
packages() {
  local dir
  for dir in . */; do
    dir=${dir%/}
    [[ -f "$dir/Cargo.toml" && -d "$dir/src" ]] || continue
    printf '%s\t%s\n' "$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n 1)" "$dir"
  done
}

# The files that `#[cfg(test)] mod NAME;` declarations in FILES point at.
test_module_files() {
  local file dir stem name
  for file in "$@"; do
    dir=$(dirname "$file")
    stem=$(basename "$file" .rs)
    case "$stem" in
      mod | lib | main) ;;
      *) dir="$dir/$stem" ;;
    esac
    while read -r name; do
      printf '%s\n' "$dir/$name.rs" "$dir/$name/mod.rs"
    done < <(awk '
      /^[[:space:]]*#\[cfg\(test\)\][[:space:]]*$/ { pending = 1; next }
      pending && match($0, /^[[:space:]]*(pub(\([^)]*\))? )?mod [A-Za-z0-9_]+;/) {
        line = $0; sub(/^[[:space:]]*(pub(\([^)]*\))? )?mod /, "", line); sub(/;.*/, "", line)
        print line
      }
      { pending = 0 }' "$file")
  done
}

# Lines of FILE outside `#[cfg(test)] mod … { … }` blocks (the block ends at the first `}` with
# the indentation of its `#[cfg(test)]`).
count_without_test_blocks() {
  awk '
    skipping { if ($0 == indent "}") { skipping = 0 } ; next }
    /^[[:space:]]*#\[cfg\(test\)\][[:space:]]*$/ {
      held = $0; match($0, /^[[:space:]]*/); held_indent = substr($0, 1, RLENGTH); next
    }
    held != "" {
      if ($0 ~ ("^" held_indent "(pub(\\([^)]*\\))? )?mod [A-Za-z0-9_]+ \\{$")) {
        skipping = 1; indent = held_indent; held = ""; next
      }
      if ($0 ~ ("^" held_indent "(pub(\\([^)]*\\))? )?mod [A-Za-z0-9_]+;")) { held = ""; next }
      n++; held = ""
    }
    { n++ }
    END { print n + 0 }' "$1"
}

total=0
daemon=0
dev_only=0
report=()
while IFS=$'\t' read -r name dir; do
  mapfile -t files < <(find "$dir/src" -name '*.rs' | sort)
  mapfile -t test_only < <(test_module_files "${files[@]}")
  lines=0
  for file in "${files[@]}"; do
    skip=0
    for t in "${test_only[@]}"; do
      [[ "$file" == "$t" ]] && skip=1
    done
    ((skip)) && continue
    lines=$((lines + $(count_without_test_blocks "$file")))
  done
  shown=$dir/src
  [[ "$dir" == . ]] && shown=src
  report+=("$(printf '%-12s %-14s %7d' "$name" "$shown" "$lines")")
  total=$((total + lines))
  [[ "$name" == testkit || "$name" == budgetd-dev ]] && dev_only=$((dev_only + lines))
  [[ "$dir" == . ]] && daemon=$lines
done < <(packages)

printf '%-12s %-14s %7s\n' package dir lines
printf '%s\n' "${report[@]}"
printf '%-12s %-14s %7d\n' total "" "$total"
awk -v d="$daemon" -v t="$total" -v x="$dev_only" 'BEGIN {
  printf "daemon (src/) share: %.1f%% of the non-test lines", 100 * d / t
  printf " (%.1f%% without testkit and budgetd-dev)\n", 100 * d / (t - x)
}'
