#!/usr/bin/env bash
# The GPU checks, as one script for one call of a lent GPU machine (it has
# torch, no Kafka and no internet): the learner's and scorer's unit tests on
# CUDA, then the learning core's and the scorer's compute on CUDA, with the same
# machine's CPU as the reference. Results land in $OUT (default /tmp/device-check).
# DEV=cpu runs the same steps without a GPU, to try the script itself;
# STEPS picks some of "tests core scorer", space-separated (default: all). The
# whole script takes about 4 minutes on an H200; each step has its own timeout.
# It exits non-zero when any step failed or timed out.
#
# The machine lacks three of our dependencies; bring them as wheels first:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     orjson fastjsonschema confluent-kafka
set -uo pipefail
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.whl}  # WHEELS=none where the packages are installed already
if [ -d "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1

DEV=${DEV:-cuda}
STEPS=${STEPS:-tests core scorer}
failed=""
step() { echo; echo "== $1"; }
check() { local rc=$?; [ "$rc" -eq 0 ] || { echo "!! $1 failed (exit $rc)"; failed="$failed $1"; }; }
wanted() { [[ " $STEPS " == *" $1 "* ]]; }

step machine
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  lscpu | grep -E '^(Model name|CPU\(s\))'
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
} 2>&1

if wanted tests; then
step "unit tests on $DEV (learner, scorer table and top-K, snapshots)"
STREAM_APP_TEST_DEVICE=$DEV timeout 90 python3 -m pytest -q -p no:cacheprovider \
    tests/unit/core tests/unit/serving tests/unit/trainer/test_snapshot.py \
    >"$OUT/tests-$DEV.log" 2>&1
check tests
tail -25 "$OUT/tests-$DEV.log"
fi

if wanted core; then
step "learning core, quality defaults"
timeout 120 python3 -m bench.core_throughput --device "$DEV" --batch 1024 4096 16384 65536 \
    --batches 10 --warmup 3 --out "$OUT/core_$DEV.json"
check core
rm -f "$OUT/core_${DEV}_profile.txt"
timeout 60 python3 -m bench.core_throughput --device "$DEV" --batch 16384 --batches 5 \
    --warmup 3 --profile "$OUT/core_${DEV}_profile.txt"
check profile
# The reference times as many batches as the CUDA run above, after as many warm-up ones.
timeout 90 python3 -m bench.core_throughput --device cpu --threads 16 --batch 4096 16384 \
    --batches 10 --warmup 3 --out "$OUT/core_cpu16.json"
check core-cpu
step "learning core, cheapest step (no replay, sampled negatives only)"
timeout 60 python3 -m bench.core_throughput --device "$DEV" --batch 16384 65536 \
    --batches 10 --warmup 3 -X replay_ratio=0 -X negatives=sampled \
    --out "$OUT/core_${DEV}_cheap.json"
check core-cheap
fi

if wanted scorer; then
step "scorer compute (each setting pruned and exhaustive)"
timeout 150 python3 -m bench.scorer_compute --device "$DEV" --items 100000 1000000 \
    --batch 32 256 --rounds 10 --out "$OUT/scorer_$DEV.json"
check scorer
timeout 150 python3 -m bench.scorer_compute --device "$DEV" --bias zipf --items 1000000 \
    --batch 32 256 --rounds 10 --out "$OUT/scorer_${DEV}_zipf.json"
check scorer-zipf
timeout 150 python3 -m bench.scorer_compute --device cpu --threads 16 --items 100000 1000000 \
    --batch 32 256 --rounds 10 --out "$OUT/scorer_cpu16.json"
check scorer-cpu
fi

if [ -n "$failed" ]; then
    echo; echo "FAILED:$failed"; exit 1
fi
