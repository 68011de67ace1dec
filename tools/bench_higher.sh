#!/bin/bash
# Second-order MAML beside the `higher` library, Conv4 84x84x3, 5-way, 15 queries, meta-batch 4,
# 3 inner steps (docs/performance.md, "Memory: second-order MAML beside `higher`"):
#   1. speed at the defaults, 5-shot: the engine and higher in one process, interleaved rounds
#      (both rows under the same malloc setting, the default: freed memory kept), with a row
#      whose every step is a logging step (algorithm.metrics_period=1);
#   2. peak RSS, each row in a fresh process of its own (--isolate), 5- and 1-shot, with the
#      malloc setting on (keep) and off (system): the defaults, checkpoint_inner_steps=true,
#      the whole meta-batch at once (task_chunk=0, with the setting on) and higher;
#   3. what one task's graph keeps for the outer backward, by node type, engine and higher.
# Usage: bash tools/bench_higher.sh [key=value ...]   (extra overrides, e.g. a small shape for a dry run)
set -u
cd "$(dirname "$0")/.."
# the project's interpreter (make install), or $PYTHON; needs the `higher` package (pip install higher)
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
SHAPE="data.image_size=84 data.channels=3 $*"
BENCH="$PY tools/benchmark.py --no-baseline --higher --config-file configs/maml_5shot.yaml"
date
$PY -c "import torch, os; print('torch', torch.__version__, '|', torch.get_num_threads(), 'threads |', os.cpu_count(), 'cpus')"
git log -1 --format='commit %h %s'

echo "== 1. speed, 5-shot, defaults vs higher, one process (and every step a logging step)"
$BENCH --iters 3 --warmup 1 $SHAPE --config-file "configs/maml_5shot.yaml algorithm.metrics_period=1"

for shot in 5 1; do
  for malloc in keep system; do
    echo "== 2. peak RSS, ${shot}-shot, --malloc $malloc, each row in its own process"
    whole=()
    [ "$malloc" = keep ] && whole=(--config-file "configs/maml_5shot.yaml solver.task_chunk=0")
    $BENCH --isolate --malloc "$malloc" --iters 1 --warmup 1 $SHAPE data.shot=$shot \
      --config-file "configs/maml_5shot.yaml algorithm.checkpoint_inner_steps=true" "${whole[@]}"
  done
done

for shot in 5 1; do
  echo "== 3. saved tensors of one task, ${shot}-shot"
  $PY tools/saved_tensors.py --config-file configs/maml_5shot.yaml --higher $SHAPE data.shot=$shot
done
date
