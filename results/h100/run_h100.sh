#!/bin/bash
# One GPU check: make bench (issue #5) and the mnist_long experiment's wall time (issue #3).
# As run on the lent H100: from a git-ignored .devrun/ folder of a copy of commit 8654e6b (its
# name in .devrun/commit), with the MNIST IDX files in the git-ignored .devdata/mnist/. The
# H100 `make mnist` row (then 3e-3, 1800 meta-steps) ran right after, in the same environment:
#   timeout 330 python3 -m experiments.mnist --out /tmp/m
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD METAOPT_DATA_DIR=$PWD/.devdata PYTHONUNBUFFERED=1
export METAOPT_COMMIT=$(cat .devrun/commit)
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee $OUT/env.txt
python3 -c "import jax,flax,optax,chex,numpy,tqdm;print('jax',jax.__version__,'flax',flax.__version__,'optax',optax.__version__,'chex',chex.__version__,'numpy',numpy.__version__,jax.devices())" 2>&1 | tee -a $OUT/env.txt
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -o 'H[0-9]\+' | head -1 | tr A-Z a-z)
timeout 240 python3 -m experiments.bench --out $OUT/bench-${GPU:-gpu}.json --mnist-batch-sizes 1,8,32 2>&1 | tee $OUT/bench.log
echo "bench done at $(( $(date +%s) - T0 )) s"
LEFT=$(( 565 - ($(date +%s) - T0) ))
timeout $LEFT python3 -m experiments.mnist_long --out /tmp/ml 2>&1 | tr '\r' '\n' | grep -v '^\s*$' > $OUT/mnist_long.log
echo "mnist_long ended at $(( $(date +%s) - T0 )) s"
cp /tmp/ml/summary.json $OUT/mnist_long_summary.json 2>/dev/null || cp /tmp/ml/summary.partial.json $OUT/mnist_long_summary_partial.json 2>/dev/null
grep -v 'it/s\]$' $OUT/mnist_long.log | tail -45
grep 'it/s\]$' $OUT/mnist_long.log | awk 'NR%100==0' | tail -8
