#!/bin/bash
# Second-order MAML beside the `higher` library, Conv4 84x84x3, 5-way, 15 queries, meta-batch 4,
# 3 inner steps (docs/performance.md, "Memory: second-order MAML beside `higher`"):
#   1. speed at the defaults, 5-shot: the engine and higher in one process, interleaved rounds
#      after 4 warm-up steps per row (with the malloc setting on the heap grows over the first
#      steps, page-faulting its new pages), both rows under one malloc setting: freed memory
#      kept (the engine's default; with a row whose every step is a logging step,
#      algorithm.diagnostics.metrics_period=1), then glibc's defaults (how higher runs in a process of its
#      own); then the ratios, the engine at its defaults against higher under each setting;
#   2. peak RSS over 4 steps, each row in a fresh process of its own (--isolate), 5- and 1-shot,
#      with the malloc setting on (keep) and off (system): the defaults, checkpoint_inner_steps=true,
#      the whole meta-batch at once (task_chunk=0, with the setting on) and higher;
#   3. what one task's graph keeps for the outer backward, by node type, engine and higher.
# Usage: bash benchmarks/bench_higher.sh [key=value ...]   (extra overrides, e.g. a small shape for a dry run)
set -u
cd "$(dirname "$0")/.."
# the project's interpreter (make install), or $PYTHON; needs the `higher` package (pip install higher)
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
SHAPE="data.image_size=84 data.channels=3 $*"
BENCH="$PY tools/benchmark.py --no-baseline --higher --config-file configs/maml_5shot.yaml"
date
$PY -c "import torch, os; print('torch', torch.__version__, '|', torch.get_num_threads(), 'threads |', os.cpu_count(), 'cpus')"
git log -1 --format='commit %h %s'

echo "== 1. speed, 5-shot, defaults vs higher, one process per malloc setting"
speed=$(mktemp -d)
trap 'rm -rf "$speed"' EXIT
for malloc in keep system; do
  logging=()
  [ "$malloc" = keep ] && logging=(--config-file "configs/maml_5shot.yaml algorithm.diagnostics.metrics_period=1")
  $BENCH --json --malloc "$malloc" --iters 5 --warmup 4 $SHAPE "${logging[@]}" > "$speed/$malloc" || exit
done
"$PY" - "$speed" <<'EOF'
import json, pathlib, sys
rows = [(malloc == "system", json.loads(line)) for malloc in ("keep", "system")
        for line in (pathlib.Path(sys.argv[1]) / malloc).open() if line.startswith("{")]
s = {(row["config"], system): row["s_per_iter"] for system, row in rows}
for (config, system), seconds in s.items():
    print(f"{'glibc defaults' if system else 'memory kept':<15} {config:<40} {seconds:7.3f} s/iter")
engine = s[("maml_5shot", False)]
for system, label in ((False, "freed memory kept"), (True, "glibc's defaults")):
    higher = next(v for (c, on), v in s.items() if c.startswith("higher") and on == system)
    print(f"engine at its defaults (freed memory kept) {engine:.3f} s; higher under {label} "
          f"{higher:.3f} s: the engine {higher / engine:.2f}x as fast")
EOF

for shot in 5 1; do
  for malloc in keep system; do
    echo "== 2. peak RSS, ${shot}-shot, --malloc $malloc, each row in its own process"
    whole=()
    [ "$malloc" = keep ] && whole=(--config-file "configs/maml_5shot.yaml solver.task_chunk=0")
    $BENCH --isolate --malloc "$malloc" --iters 2 --warmup 2 $SHAPE data.shot=$shot \
      --config-file "configs/maml_5shot.yaml algorithm.execution.checkpoint_inner_steps=true" "${whole[@]}"
  done
done

for shot in 5 1; do
  echo "== 3. saved tensors of one task, ${shot}-shot"
  $PY benchmarks/saved_tensors.py --config-file configs/maml_5shot.yaml --higher $SHAPE data.shot=$shot
done
date
