#!/usr/bin/env python
"""Train (or evaluate) a meta-learner from a config file.

    python tools/train_net.py --config-file configs/maml_5shot.yaml solver.max_iter=3000
    python tools/train_net.py --config-file configs/maml_5shot.yaml --resume      # continue
    python tools/train_net.py --config-file configs/maml_5shot.yaml --eval-only   # test only

The flow, top to bottom: load the config → build the dataset, samplers, task lists, algorithm,
optimizer and (with ``--resume``) read the checkpoint — any of which may fail on bad input,
before anything is written — → :func:`engine.defaults.default_setup` (output folder,
``config.yaml``, logging, seeds) → :class:`engine.trainer.MetaTrainer` with its hooks → save
``model_final.pth`` → test the final and the best-on-validation weights on the same fixed test
tasks → ``results.json`` and one summary line. Bad input ends with ``error: <message>`` on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python tools/train_net.py` from anywhere
    sys.path.insert(0, str(ROOT))

from datasets import EpisodicSampler, TaskList, build_dataset  # noqa: E402
from engine.checkpoint import Checkpointer, atomic_write  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.defaults import (  # noqa: E402
    build_lr_scheduler,
    build_optimizer,
    check_output_dir,
    default_setup,
    resolve_device,
    seed_all,
)
from engine.errors import CheckpointError, UserInputError  # noqa: E402
from engine.evaluation import evaluate  # noqa: E402
from engine.hooks import (  # noqa: E402
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PhaseBoundary,
)
from engine.trainer import MetaTrainer  # noqa: E402
from models import build_algorithm  # noqa: E402

logger = logging.getLogger("train_net")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="experiment YAML")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the output folder's last checkpoint (all state)")
    parser.add_argument("--eval-only", action="store_true",
                        help="only test: model_final.pth, else the last checkpoint, else --weights")
    parser.add_argument("--weights", metavar="PATH", help="checkpoint to evaluate with --eval-only")
    parser.add_argument("--output-dir", metavar="DIR", help="overrides the config's output_dir")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="key=value",
                        help="config overrides in Hydra's grammar (e.g. solver.lr=3e-4)")
    return parser.parse_args(argv)


def _task_list(cfg, dataset, split: str, num_tasks: int) -> TaskList:
    d = cfg.data
    return TaskList(dataset.split(split), d.way, d.shot, d.query, num_tasks, seed=cfg.test.seed)


def _test(cfg, algorithm, tasks: TaskList, device, desc: str) -> dict:
    return evaluate(algorithm, tasks, cfg.test.batch, device, desc=desc)


def _summary(result: dict, cfg, label: str = "test accuracy") -> str:
    return (f"{label}: {result['acc']:.2f} ± {result['ci95']:.2f} % "
            f"({result['n']} tasks, {cfg.data.way}-way {cfg.data.shot}-shot)")


def _write_json(path: Path, data: dict) -> None:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
    atomic_write(path, lambda f: f.write((json.dumps(clean, indent=2) + "\n").encode()))


def _eval_weights(cfg, args, checkpointer: Checkpointer) -> Path:
    """The checkpoint ``--eval-only`` tests: ``--weights``, else model_final, else the last one."""
    if args.weights:
        return Path(args.weights)
    final = Path(cfg.output_dir) / "model_final.pth"
    if final.is_file():
        return final
    last = checkpointer.get_checkpoint_file()
    if last is None:
        raise CheckpointError(f"{final}: checkpoint not found (and no last_checkpoint in "
                              f"{cfg.output_dir}); train first or pass --weights")
    return last


def run(args: argparse.Namespace) -> dict:
    start_time = time.perf_counter()
    cfg = load_config(args.config_file, args.opts)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    check_output_dir(cfg, resume=args.resume, eval_only=args.eval_only)  # fail fast, reads only
    device = resolve_device(cfg.device)
    seed_all(int(cfg.seed))  # initial weights

    # ---- build everything that can fail on bad input, before writing anything -------------
    dataset = build_dataset(cfg.data)
    test_tasks = _task_list(cfg, dataset, "test", cfg.test.tasks)
    algorithm = build_algorithm(cfg).to(device)
    checkpointer = Checkpointer(cfg.output_dir, cfg.solver.keep_checkpoints, cfg)
    out = Path(cfg.output_dir)

    if args.eval_only:
        weights = _eval_weights(cfg, args, checkpointer)
        state = checkpointer.load(weights)
        default_setup(cfg, args)
        algorithm.load_state_dict(state["model"])
        result = _test(cfg, algorithm, test_tasks, device, "test")
        _write_json(out / "eval_results.json", {
            "weights": str(weights), "test_acc": result["acc"], "test_ci95": result["ci95"],
            "test_tasks": result["n"]})
        print(_summary(result, cfg), flush=True)
        return result

    d = cfg.data
    sampler = EpisodicSampler(dataset.split("train"), d.way, d.shot, d.query,
                              cfg.solver.meta_batch, seed=cfg.seed)
    val_tasks = _task_list(cfg, dataset, "val", cfg.test.val_tasks)
    optimizer = build_optimizer(cfg, algorithm)
    scheduler = build_lr_scheduler(cfg, optimizer)
    resume_state = checkpointer.resume_or_load(resume=True) if args.resume else None

    # ---- output folder, config.yaml, logging, seeds ----------------------------------------
    device = default_setup(cfg, args)
    trainer = MetaTrainer(algorithm, sampler, optimizer, device)
    timer = IterationTimer()
    eval_hook = EvalHook(cfg.test.eval_period, val_tasks, checkpointer, cfg.test.batch, device)
    trainer.register_hooks([
        timer,
        LRScheduler(optimizer, scheduler),
        PhaseBoundary(optimizer, cfg.pretrain.iters) if cfg.pretrain.iters > 0 else None,
        eval_hook,
        PeriodicCheckpointer(checkpointer, cfg.solver.checkpoint_period),
        PeriodicWriter(out, cfg.log.period, tensorboard=cfg.log.tensorboard),
    ])
    start_iter = 0
    if resume_state is not None:
        try:
            start_iter = trainer.load_state_dict(resume_state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{checkpointer.get_checkpoint_file()}: cannot restore the "
                                  f"training state ({str(exc).splitlines()[0]})") from None
        logger.info("resuming from iteration %d", start_iter)
    max_iter = int(cfg.solver.max_iter)
    if start_iter > max_iter:
        logger.warning("checkpoint is at iteration %d, past solver.max_iter=%d; not training",
                       start_iter, max_iter)
    trainer.train(start_iter, max(start_iter, max_iter))

    # ---- final weights, then test final and best-on-validation on the same tasks ----------
    iterations = trainer.iter
    checkpointer.save("model_final", model=algorithm.state_dict(), iteration=iterations)
    final = _test(cfg, algorithm, test_tasks, device, "test (final)")
    best_path = out / "model_best.pth"
    best = None
    if eval_hook.best_iter == iterations:  # the final weights are the best-on-validation ones
        best = final
    elif eval_hook.best_iter is not None and best_path.is_file():
        algorithm.load_state_dict(checkpointer.load(best_path)["model"])
        best = _test(cfg, algorithm, test_tasks, device, "test (best val)")
    results = {
        "test_acc": final["acc"], "test_ci95": final["ci95"], "test_tasks": final["n"],
        "test_acc_init": final.get("acc_init"), "test_ci95_init": final.get("ci95_init"),
        "best_val_acc": eval_hook.best_acc, "best_val_iter": eval_hook.best_iter,
        "best_test_acc": best["acc"] if best else None,
        "best_test_ci95": best["ci95"] if best else None,
        "iterations": iterations,
        # this process (build, train, test) plus the training time of the runs it resumed
        "wall_time_s": timer.resumed_s + time.perf_counter() - start_time,
    }
    _write_json(out / "results.json", results)
    if best:
        logger.info(_summary(best, cfg, f"best-on-val (iter {eval_hook.best_iter}) test accuracy"))
    print(_summary(final, cfg), flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
