"""Training throughput of hwnas's trainer against a plain hand-written PyTorch loop.

Same network (a MENNDL genome: a small residual CNN for 3x32x32 inputs, 10 classes), same
initial weights, same batch size, same device and thread count, same SGD; the images are
synthetic uint8 3x32x32 tensors (throughput does not depend on their content) held in memory
as an :class:`ArrayDataset`, as the search holds a dataset. Rounds are interleaved (trainer,
plain A, plain B, in a rotating order) so that a load change on this shared machine hits all
three alike; each figure is the median over the rounds of images/s over one training epoch
(validation excluded). ``plain B / plain A`` is the noise floor: how far two identical runs
differ here.

On CUDA both run with fp16 autocast, a gradient scaler and channels_last (the trainer's GPU
set-up; the plain loop does the same by hand), and pinned host batches.

Usage: ``python bench/train_throughput.py [--images 2048] [--batch 128] [--rounds 5]
[--threads 2] [--device auto]``. Prints the table and the machine's load (``uptime``) before
and after.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from search.spaces.base import TaskSpec, TrainHParams  # noqa: E402
from search.spaces.menndl import ConvGene, HeadGene, MenndlGenome, MenndlSpace, PoolGene  # noqa: E402
from search.training.data import ArrayDataset  # noqa: E402
from search.training.devices import resolve_device  # noqa: E402
from search.training.train import train_candidate  # noqa: E402

TASK = TaskSpec(in_channels=3, image_size=32, num_classes=10)
GENOME = MenndlGenome(layers=(
    ConvGene(filters=32, kernel=3), ConvGene(filters=32, kernel=3, skip_from=1),
    PoolGene(kind="max", kernel=2, stride=2),
    ConvGene(filters=64, kernel=3), ConvGene(filters=64, kernel=3, skip_from=3),
    PoolGene(kind="max", kernel=2, stride=2),
    ConvGene(filters=64, kernel=3)), head=HeadGene(hidden=0, dropout=0.0))


class _Splits:
    def __init__(self, train: ArrayDataset, val: ArrayDataset) -> None:
        self.train, self.val, self.task, self.name = train, val, TASK, "synthetic"


def _data(n: int, seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return ArrayDataset(x=x, y=y, scale=255.0, mean=torch.full((3,), 0.5), std=torch.full((3,), 0.25))


def run_trainer(model: torch.nn.Module, splits: _Splits, batch: int, device: str) -> float:
    """images/s of ``train_candidate`` over one epoch (its own measure: validation excluded)."""
    hp = TrainHParams(learning_rate=0.05, batch_size=batch, epochs=1, weight_decay=5e-4, optimizer="sgd",
                      schedule="constant")
    r = train_candidate(model, splits, hp, seed=0, device=device, patience=None, restore_best=False)
    return r.images_per_s


def run_plain(model: torch.nn.Module, data: ArrayDataset, batch: int, device: str) -> float:
    """images/s of a hand-written loop: shuffle, normalise, forward, loss, backward, step."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model.to(dev).train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    mean, std = data.mean, data.std
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(data), batch):
        idx = order[i:i + batch]
        x = (data.x[idx].float().div_(255.0) - mean) / std
        y = data.y[idx]
        if cuda:
            x, y = x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=cuda):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()  # the trainer reads the loss every step too (divergence check)
    if cuda:
        torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    torch.manual_seed(0)
    base = MenndlSpace(max_filters=64).build(GENOME, TASK)
    params = sum(p.numel() for p in base.parameters())
    train = _data(args.images, 0)
    splits = _Splits(train, _data(args.batch, 1))
    runs: dict[str, list[float]] = {"trainer": [], "plain A": [], "plain B": []}
    order = list(runs)
    run_plain(copy.deepcopy(base), _data(args.batch * 2, 2), args.batch, device)  # warm-up (allocator, kernels)
    for r in range(args.rounds):
        for name in order[r % 3:] + order[:r % 3]:
            model = copy.deepcopy(base)
            runs[name].append(run_trainer(model, splits, args.batch, device) if name == "trainer"
                              else run_plain(model, train, args.batch, device))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"network: MENNDL genome, {params} parameters, 3x32x32 synthetic uint8 images; batch {args.batch}, "
          f"{args.images} images per epoch, device {device}, {args.threads} torch threads"
          + (", fp16 autocast + channels_last" if device.startswith("cuda") else ", fp32"))
    print(f"{'run':10s} {'median images/s':>16s}  rounds")
    for k, v in runs.items():
        print(f"{k:10s} {med[k]:16.1f}  " + " ".join(f"{x:.0f}" for x in v))
    print(f"trainer / plain A = {med['trainer'] / med['plain A']:.3f}x   "
          f"noise floor plain B / plain A = {med['plain B'] / med['plain A']:.3f}x")
    print("load after: ", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
