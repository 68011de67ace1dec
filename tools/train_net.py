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

import torch  # noqa: E402

from datasets import EpisodicSampler, TaskList, build_dataset  # noqa: E402
from engine.checkpoint import Checkpointer, atomic_write  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.cpu_memory import keep_freed_memory  # noqa: E402
from engine.defaults import (  # noqa: E402
    build_lr_scheduler,
    build_optimizer,
    check_output_dir,
    check_solver,
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
from engine.launch import RankSlice, World, check_meta_batch, init_distributed  # noqa: E402
from engine.trainer import MetaTrainer, NumericalFault  # noqa: E402
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
    slurm = parser.add_argument_group("SLURM (engine/slurm.py, docs/cluster.md)")
    slurm.add_argument("--slurm", action="store_true", help="submit this run as a SLURM job and return")
    slurm.add_argument("--slurm-local", action="store_true", help="the same job, on submitit's local executor")
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="one training process per GPU")
    slurm.add_argument("--tasks-per-node", type=int, help="processes per node (default: GPUs, or 1)")
    slurm.add_argument("--cpus-per-task", type=int, default=2)
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", type=int, default=60, metavar="MIN", help="time limit per job")
    slurm.add_argument("--mem", type=int, metavar="GB", help="memory per node")
    slurm.add_argument("--max-requeues", type=int, default=10, help="on preemption or time limit")
    parser.add_argument("opts", nargs="*", metavar="key=value",
                        help="config overrides in Hydra's grammar (e.g. solver.lr=3e-4)")
    return parser.parse_intermixed_args(argv)  # flags may follow the overrides


def _task_list(cfg, dataset, split: str, num_tasks: int) -> TaskList:
    d = cfg.data
    return TaskList(dataset.split(split), d.way, d.shot, d.query, num_tasks, seed=cfg.test.seed)


def _test(cfg, algorithm, tasks: TaskList, device, desc: str, world: World) -> dict:
    return evaluate(algorithm, tasks, cfg.test.batch, device, desc=desc, world=world)


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


def run(args: argparse.Namespace, extra_hooks=()) -> dict:
    """One run as the module doc describes; ``extra_hooks`` are appended to the trainer's
    (the SLURM job adds its preemption hook, :mod:`engine.slurm`)."""
    start_time = time.perf_counter()
    cfg = load_config(args.config_file, args.opts)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    check_solver(cfg)
    device = resolve_device(cfg.device)
    malloc_note = keep_freed_memory()  # before the first large tensor (engine/cpu_memory.py)
    world = init_distributed(device)  # torchrun, a SLURM job step, or one process
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    check_meta_batch(cfg.solver.meta_batch, world)
    if world.is_main:
        check_output_dir(cfg, resume=args.resume, eval_only=args.eval_only)  # fail fast, reads only
    seed_all(int(cfg.seed))  # initial weights

    # ---- build everything that can fail on bad input, before writing anything -------------
    dataset = build_dataset(cfg.data)
    test_tasks = _task_list(cfg, dataset, "test", cfg.test.tasks)
    algorithm = build_algorithm(cfg).to(device)
    checkpointer = Checkpointer(cfg.output_dir, cfg.solver.keep_checkpoints, cfg, writer=world.is_main)
    out = Path(cfg.output_dir)

    if args.eval_only:
        weights = _eval_weights(cfg, args, checkpointer)
        state = checkpointer.load(weights)
        default_setup(cfg, args, world)
        algorithm.load_state_dict(state["model"])
        result = _test(cfg, algorithm, test_tasks, device, "test", world)
        if world.is_main:
            _write_json(out / "eval_results.json", {
                "weights": str(weights), "test_acc": result["acc"], "test_ci95": result["ci95"],
                "test_tasks": result["n"]})
            print(_summary(result, cfg), flush=True)
        return result

    d = cfg.data
    # every process draws the whole meta-batch and keeps its share (engine/launch.py)
    sampler = RankSlice(EpisodicSampler(dataset.split("train"), d.way, d.shot, d.query,
                                        cfg.solver.meta_batch, seed=cfg.seed), world)
    val_tasks = _task_list(cfg, dataset, "val", cfg.test.val_tasks)
    optimizer = build_optimizer(cfg, algorithm)
    scheduler = build_lr_scheduler(cfg, optimizer)
    resume_state = checkpointer.resume_or_load(resume=True) if args.resume else None

    # ---- output folder, config.yaml, logging, seeds ----------------------------------------
    default_setup(cfg, args, world)
    logger.info(malloc_note)
    core = getattr(algorithm, "main", algorithm)
    logger.info("inner loop: %s engine (algorithm.engine=%s; auto = vmap over tasks on CUDA, the "
                "per-task loop on CPU, where each measured faster)", core.resolved_engine(device), core.engine)
    logger.info("channels-last images: %s (algorithm.channels_last=%s; auto on CPU = the query set, and the "
                "support set too when no double backward runs through it)",
                core.resolved_channels_last(device), core.channels_last)
    trainer = MetaTrainer(algorithm, sampler, optimizer, device, world, cfg.solver.on_nonfinite,
                          cfg.solver.max_skips, cfg.solver.clip_grad_norm)
    timer = IterationTimer()
    eval_hook = EvalHook(cfg.test.eval_period, val_tasks, checkpointer, cfg.test.batch, device)
    trainer.register_hooks([
        timer,
        LRScheduler(optimizer, scheduler),
        PhaseBoundary(optimizer, cfg.pretrain.iters) if cfg.pretrain.iters > 0 else None,
        eval_hook,
        PeriodicCheckpointer(checkpointer, cfg.solver.checkpoint_period),
        PeriodicWriter(out, cfg.log.period, tensorboard=cfg.log.tensorboard) if world.is_main else None,
        *extra_hooks,
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
    try:
        trainer.train(start_iter, max(start_iter, max_iter))
    except NumericalFault as fault:
        saved = checkpointer.save("model_last_good", tag_last=True, **fault.state)
        raise NumericalFault(f"{fault}. Try a lower solver.lr or algorithm.inner_lr, solver.clip_grad_norm, "
                             f"or solver.on_nonfinite=skip. The state before it is in {saved}", fault.state) from None

    # ---- final weights, then test final and best-on-validation on the same tasks ----------
    iterations = trainer.iter
    checkpointer.save("model_final", model=algorithm.state_dict(), iteration=iterations)
    final = _test(cfg, algorithm, test_tasks, device, "test (final)", world)
    best_path = out / "model_best.pth"
    best = None
    if eval_hook.best_iter == iterations:  # the final weights are the best-on-validation ones
        best = final
    elif eval_hook.best_iter is not None and best_path.is_file():
        algorithm.load_state_dict(checkpointer.load(best_path)["model"])
        best = _test(cfg, algorithm, test_tasks, device, "test (best val)", world)
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
    if world.is_main:
        _write_json(out / "results.json", results)
        if best:
            logger.info(_summary(best, cfg, f"best-on-val (iter {eval_hook.best_iter}) test accuracy"))
        print(_summary(final, cfg), flush=True)
    return results


SLURM_FLAGS = {"--slurm": 0, "--slurm-local": 0, "--nodes": 1, "--gpus-per-node": 1, "--tasks-per-node": 1,
               "--cpus-per-task": 1, "--partition": 1, "--account": 1, "--time": 1, "--mem": 1,
               "--max-requeues": 1}


def _job_argv(argv: list[str]) -> list[str]:
    """The command line minus the SLURM flags: what the job itself runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in SLURM_FLAGS:
            skip = SLURM_FLAGS[flag] == 1 and "=" not in arg
            continue
        out.append(arg)
    return out


def submit_job(args: argparse.Namespace, argv: list[str]) -> None:
    """``--slurm`` / ``--slurm-local``: submit and print where to look (engine/slurm.py)."""
    from engine.slurm import submit  # noqa: PLC0415  (submitit only when asked for)

    cfg = load_config(args.config_file, args.opts)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    job_argv = _job_argv(argv)
    if not args.output_dir:  # pin the folder the job writes to: the one printed here
        job_argv += ["--output-dir", str(Path(cfg.output_dir).resolve())]
    job = submit(job_argv, Path(cfg.output_dir).resolve(), local=args.slurm_local, nodes=args.nodes,
                 gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                 cpus_per_task=args.cpus_per_task, partition=args.partition, account=args.account,
                 time_min=args.time, mem_gb=args.mem, max_requeues=args.max_requeues)
    print(f"submitted job {job.job_id} ({'local' if args.slurm_local else 'slurm'})")
    print(f"  output: {Path(cfg.output_dir).resolve()}")
    print(f"  stdout: {job.paths.stdout}")
    print(f"  stderr: {job.paths.stderr}", flush=True)
    if args.slurm_local:  # the local executor's job dies with this process: wait for it
        job.result()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        if args.slurm or args.slurm_local:
            submit_job(args, argv)
            return 0
        run(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except NumericalFault as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
