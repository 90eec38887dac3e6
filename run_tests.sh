#!/usr/bin/env bash
# Runs the test suite once per Keras backend; fails if any backend fails.
# Extra arguments go to pytest, e.g. `bash run_tests.sh -x tests/prompt_encoder_test.py`.
set -u
cd "$(dirname "$0")"
failed=()
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -q "$@" || failed+=("$backend")
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED on: ${failed[*]}"
  exit 1
fi
echo "all backends passed"
