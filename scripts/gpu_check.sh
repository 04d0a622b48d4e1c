#!/usr/bin/env bash
# The GPU check, one command: the CUDA tests (pytest -m gpu), the benchmark on CUDA, and a
# full-size training run's epoch times and startup. Run it from the repo root whenever a GPU
# machine is available; logs go to $OUT (default: a temp dir), one tarball.
#
#   bash scripts/gpu_check.sh            # on the GPU machine
#   DEV=cpu bash scripts/gpu_check.sh    # a dry run here: same steps, small, on the CPU
#
# A machine without hydra-core/omegaconf (the lent GPU machine) gets them from .gpu/whl (wheels
# built beforehand: ../shared/notes/gpu-machine.md), installed to /tmp/site with aecli itself.
set -u
DEV=${DEV:-cuda}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
REPO=$(pwd)
export PYTHONUNBUFFERED=1
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
  python3 -m pip install -q --upgrade --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site
fi
# tests and commands run from a dir without the checkout's aecli/ (it has no aecli/conf; the
# installed aecli does)
work=$(mktemp -d)
cp -r tests pyproject.toml scripts "$work"/
cd "$work"
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.log"; }

BENCH=${BENCH:-1}
if [ "$DEV" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt"
  REPEAT=48; EPOCHS=3; STARTUP=3; RUN_EPOCHS=5
else
  REPEAT=2; EPOCHS=1; STARTUP=1; RUN_EPOCHS=1
fi

log "pytest -m gpu"
timeout 230 python3 -m pytest -m gpu -q -p no:cacheprovider -o addopts="" --durations=10 tests/test_gpu.py \
  > "$OUT/gpu_tests.log" 2>&1; echo "rc=$?" >> "$OUT/gpu_tests.log"; tail -3 "$OUT/gpu_tests.log" | tee -a "$OUT/summary.log"

log "bench (digits tiled to a 60k epoch)"
[ "$BENCH" = 1 ] && timeout 200 python3 -m aecli.bench --device "$DEV" --repeat $REPEAT --epochs $EPOCHS --startup-runs $STARTUP \
  > "$OUT/bench.log" 2>&1; echo "rc=$?" >> "$OUT/bench.log"; cat "$OUT/bench.log" | tee -a "$OUT/summary.log"

log "a full-size run: experiment=mnist_vae on 60k MNIST-like images"
python3 scripts/mnist_like.py "$work/data" > /dev/null
timeout 100 python3 -m aecli.train experiment=mnist_vae dataset.root="$work/data" dataset.download=false \
  device=$DEV trainer.epochs=$RUN_EPOCHS hydra.run.dir="$work/run" > "$OUT/run.log" 2>&1
echo "rc=$?" >> "$OUT/run.log"
grep -E "epoch|first_step|rc=" "$OUT/run.log" | tee -a "$OUT/summary.log"
python3 -c "import json; m = json.load(open('$work/run/metrics.json')); print({k: m[k] for k in ('first_step_seconds', 'images_per_sec', 'test/neg_elbo_nats_per_image')})" \
  2>&1 | tee -a "$OUT/summary.log"

log "startup, with the bytecode cached (PYTHONPYCACHEPREFIX; the first run fills the cache)"
for i in 1 2 3; do
  PYTHONPYCACHEPREFIX="$work/pycache" timeout 60 python3 -m aecli.train trainer.max_steps=1 device=$DEV \
    hydra.run.dir="$work/startup$i" > /dev/null 2>&1
  python3 -c "import json; print('run $i first_step_seconds', json.load(open('$work/startup$i/metrics.json'))['first_step_seconds'])" \
    2>&1 | tee -a "$OUT/summary.log"
done

tar -czf "$OUT/gpu_check.tgz" -C "$OUT" --exclude gpu_check.tgz . 2>/dev/null
echo "logs: $OUT"
