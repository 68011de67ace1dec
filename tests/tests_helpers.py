"""Small builders shared by the tests."""

from pathlib import Path

import torch

from lil_meta.datasets.task_batch import TaskBatch

ROOT = Path(__file__).resolve().parents[1]


def tiny_batch(tasks=2, way=5, shot=2, query=3, size=16, channels=1, seed=0):
    """Separable toy tasks: class c lights up the c-th horizontal band of the image."""
    g = torch.Generator().manual_seed(seed)

    def images(labels):
        x = 0.3 * torch.rand(*labels.shape, channels, size, size, generator=g)
        band = size // way
        for c in range(way):
            x[..., c * band:(c + 1) * band, :] += (labels == c).float()[..., None, None, None]
        return x

    sy = torch.stack([torch.randperm(way, generator=g).repeat_interleave(shot) for _ in range(tasks)])
    qy = torch.stack([torch.randperm(way, generator=g).repeat_interleave(query) for _ in range(tasks)])
    return TaskBatch(images(sy), sy, images(qy), qy)


def one_step_query_loss(model, support, query, lr=0.1):
    """θ⁰ (the named parameters) and the query loss after one second-order inner step on
    ``support``; both sets are 3-way with labels 0, 1, 2 repeated in order."""
    params = dict(model.named_parameters())

    def loss_at(p, x):
        labels = torch.arange(3).repeat(len(x) // 3)
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), labels)

    grads = torch.autograd.grad(loss_at(params, support), list(params.values()), create_graph=True)
    adapted = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return params, loss_at(adapted, query)


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(args: list[str], size: int = 2, **env_extra: str) -> list:
    """``tools/train_net.py args`` as ``size`` processes of one run, started by hand with the
    variables torchrun or SLURM would set (``tests/`` on the path, for a test's user modules)."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    port, procs = free_port(), []
    for rank in range(size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PYTHONPATH=str(ROOT / "tests"), **env_extra)
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tools" / "train_net.py"), *args], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list, timeout: float = 300) -> list[tuple[int, str]]:
    """Each process's exit status and stderr, once all have ended."""
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, err))
    return results


def process_env(pid: int) -> dict[str, str]:
    """A process's environment (``{}`` once it is gone)."""
    try:
        raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def as_double(batch: TaskBatch) -> TaskBatch:
    """``batch`` with its images in fp64 (the gradient tests' precision)."""
    return TaskBatch(*(t.double() if t.is_floating_point() else t for t in batch))


def random_batch(tasks=3, way=3, shot=2, query=3, size=16, channels=1, dtype=torch.float64, seed=0):
    """Uniform random images, each task's labels a random permutation of the classes."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, way * shot, channels, size, size, generator=g, dtype=dtype)
    qx = torch.rand(tasks, way * query, channels, size, size, generator=g, dtype=dtype)
    sy = torch.stack([torch.randperm(way, generator=g).repeat_interleave(shot) for _ in range(tasks)])
    qy = torch.stack([torch.randperm(way, generator=g).repeat_interleave(query) for _ in range(tasks)])
    return TaskBatch(sx, sy, qx, qy)


def schema_config(**overrides):
    """The schema's config (every key at its default) with ``{dotted.key: value}`` set."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    from lil_meta.engine.config import Config  # noqa: PLC0415

    cfg = OmegaConf.structured(Config)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg
