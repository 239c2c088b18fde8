#!/bin/bash
# As run on the lent H100 from .devrun/ (run.py there as gen_trial.py), twice: first with
#   for c in range range_s1 range_s2 range250 range250_s1 fixed0316 range_p25  (timeout 500)
# then with the line below. One GPU check for issue #9: imitation candidates of make
# generalize, side by side, at full scale (1000 meta-steps, curriculum to 1000-step runs, 64
# test runs per task), without the CIFAR-10 task. Each candidate is its own process (the GPU
# is mostly idle between small kernels); each is cut at 500 s (then 420 s), keeping
# summary.partial.json for the tasks it finished.
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD METAOPT_DATA_DIR=$PWD/.devdata PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false METAOPT_COMMIT=$(cat .devrun/commit)-dirty
T0=$(date +%s)
mkdir -p /tmp/g
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > /tmp/g/env.txt
python3 -c "import jax,flax,optax;print(jax.__version__,flax.__version__,optax.__version__,jax.devices())" >> /tmp/g/env.txt 2>&1
cat /tmp/g/env.txt
for c in final_s0 final_s1 final_s2 avg_s0 avg_s1 avg_s2 p25_s1 p25_s2 final_p25; do
  (timeout 420 python3 .devrun/gen_trial.py $c /tmp/g/$c > /tmp/g/$c.log 2>&1
   echo "$c rc $? at $(( $(date +%s) - T0 )) s" >> /tmp/g/times.txt) &
done
wait
cd /tmp/g && tar czf $OUT/gen.tgz --exclude='*.png' . && cat times.txt
grep -h "meta-training\|evaluated variant" /tmp/g/*.log
