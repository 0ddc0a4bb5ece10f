"""Where trainings run: the training device, the worker slots and each worker's torch set-up.

- :func:`resolve_device`: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``; a requested
  ``cuda`` / ``cuda:N`` that is absent is an error (never a silent CPU fallback).
- :func:`worker_devices`: one worker per visible GPU on ``cuda``; ``train_workers`` on CPU.
- :func:`cpu_threads`: torch threads per CPU worker, so that the workers together do not
  oversubscribe the machine's cores.
- :func:`configure_worker`: a worker process's threads, device and kernel choices (cudnn
  autotuning on CUDA, or deterministic kernels when asked for).
"""
from __future__ import annotations

import os


class DeviceError(RuntimeError):
    """The requested training device is not present."""


def resolve_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cuda``/``cuda:N`` checked against what torch sees."""
    import torch

    req = (requested or "auto").strip().lower()
    if req == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return "cpu"
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"training device {requested!r} requested, but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                              "use --train-device cpu to train on the CPU")
        if req != "cuda":
            index = req.partition(":")[2]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceError(f"training device {requested!r}: torch sees "
                                  f"{torch.cuda.device_count()} GPU(s) (cuda:0..)")
        return req
    raise DeviceError(f"unknown training device {requested!r}; auto, cpu, cuda or cuda:N")


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of every training worker: one per visible GPU for ``cuda`` (``cuda:N``: that
    one), ``workers`` CPU workers for ``cpu``."""
    if device == "cuda":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if device.startswith("cuda:"):
        return [device]
    return ["cpu"] * max(1, workers)


def cpu_threads(workers: int, torch_threads: int = 0) -> int:
    """Torch threads per worker: ``torch_threads`` when set, else the cores shared out."""
    if torch_threads > 0:
        return torch_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def configure_worker(device: str, threads: int, *, deterministic: bool) -> None:
    """Set up this process for training on ``device`` with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)  # only possible before the first parallel work
    except RuntimeError:
        pass
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        # autotuning picks the fastest kernels per shape; it is also what makes runs differ
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        # CPU kernels of these networks are deterministic already; this makes it a promise
        torch.use_deterministic_algorithms(True, warn_only=True)
