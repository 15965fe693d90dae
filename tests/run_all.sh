#!/usr/bin/env bash
# run_all.sh: runs each Check test program given, prints a summary line, fails if any failed.
# Leaves out building (the Makefile does that).
set -u
pass=0; fail=0; failed=""
for t in "$@"; do
  echo "== $t"
  if "$t"; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed $t"; fi
done
echo "test programs: $pass passed, $fail failed${failed:+ (failed:$failed)}"
[ "$fail" -eq 0 ]
