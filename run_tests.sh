#!/usr/bin/env bash
# Runs the whole test suite on TensorFlow, JAX and PyTorch, the three at once
# (most of a run is single-threaded compilation and dispatch, so two cores
# take three runs), and prints each backend's log when all are done. Fails if
# any backend fails or skips a test for a reason other than running on one
# backend only. Extra arguments go to pytest, e.g.
# `bash run_tests.sh -x tests/prompt_encoder_test.py` or `-m "not slow"`.
set -u
cd "$(dirname "$0")"
logs=$(mktemp -d)
start=$(date +%s)
# The real decoders are converted once per machine into the user cache.
# SmolLM2 (about 1 min the first time, nothing after), which every backend
# tests, is converted here before the backends start, so that their
# processes do not all convert it at once; Gemma 3 (about 2 min) is tested
# from the TensorFlow suite only, which converts it on the way (that suite
# ends minutes before the others).
python -c "from keras_ptuning import presets; presets.smollm2_preset_dir()" \
  >"$logs/presets.log" 2>&1 \
  || { echo "=== converting the decoder presets failed:"; tail -5 "$logs/presets.log"; }
backends=(tensorflow jax torch)
pids=()
for backend in "${backends[@]}"; do
  # JAX has the most work (XLA lowers and compiles every new op shape): two
  # workers keep both cores busy once the other backends are done; a test
  # module stays on one worker, so its module-scoped models are built once.
  workers=()
  [ "$backend" = jax ] && workers=(-n 2 --dist loadfile)
  # TensorFlow's run is the longest chain of single-threaded work: it gets
  # the cores first, the others fill the gaps (measured: the others ended
  # 3.5-5 min before it without this).
  priority=(nice -n 10)
  [ "$backend" = tensorflow ] && priority=()
  # Three suites share the cores: one compute thread per TensorFlow and
  # PyTorch process (OpenMP, TensorFlow's op pools; children inherit it)
  # keeps them from contending with each other (three concurrent runs of
  # one test module: TensorFlow 110 -> 89 s, PyTorch 99 -> 76 s). JAX's
  # XLA did not gain (111 -> 126 s) and keeps its defaults.
  threads=(OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1)
  [ "$backend" = jax ] && threads=()
  env "${threads[@]}" KERAS_BACKEND=$backend "${priority[@]}" python -m pytest -q -rfEs --durations=15 --cpu-durations=15 \
    --fail-on-unexpected-skips "${workers[@]}" "$@" \
    >"$logs/$backend.log" 2>&1 &
  pids+=($!)
done
failed=()
for i in "${!backends[@]}"; do
  wait "${pids[$i]}" || failed+=("${backends[$i]}")
done
for backend in "${backends[@]}"; do
  echo "=== KERAS_BACKEND=$backend"
  cat "$logs/$backend.log"
done
rm -rf "$logs"
echo "wall time for all backends: $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED on: ${failed[*]}"
  exit 1
fi
echo "all backends passed"
