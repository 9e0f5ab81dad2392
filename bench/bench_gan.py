"""Throughput of the balanced CycleGAN on random tensors: training iterations and translation.

One training iteration is the real ``CycleGan.train_step`` (G+F update with every enabled loss term,
then both discriminators with pooled fakes and, when on, the Lipschitz penalty) on a batch of
``--batch`` source and ``--batch`` real images; images/s counts source images. T is a fresh SmallCNN.
Translation is G alone under ``torch.inference_mode``.

    python bench/bench_gan.py --size 32 --width 16 --blocks 3 --batch 16 --iters 20 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from pipeline.config import GanParams, GeneratorParams, DiscriminatorParams, LossWeights
from pipeline.distributed import resolve_device
from pipeline.gan.trainer import CycleGan, Precision
from pipeline.task.models import build_task_model

VARIANTS = {  # name -> weights overriding the defaults (everything on)
    "all terms": {},
    "no LP": {"lipschitz": 0.0},
    "no task": {"task": 0.0},
    "no LP, no task": {"lipschitz": 0.0, "task": 0.0},
}


def gan_params(args: argparse.Namespace, **weights: float) -> GanParams:
    return GanParams(generator=GeneratorParams(args.width, args.blocks, args.downsamplings),
                     discriminator=DiscriminatorParams(args.width, args.layers), batch_size=args.batch,
                     weights=dataclasses.replace(LossWeights(), **weights), amp=args.amp,
                     channels_last=args.channels_last, compile=args.compile)


def time_training(args: argparse.Namespace, weights: dict[str, float], device: torch.device) -> float:
    """Seconds per training iteration (after ``--warmup`` untimed ones)."""
    torch.manual_seed(0)
    task = build_task_model("small_cnn", args.channels, 10, width=args.task_width)
    gan = gan_params(args, **weights)
    model = CycleGan(gan, args.channels, task, Precision(device, gan.amp, gan.channels_last), seed=0)
    x = torch.rand(args.batch, args.channels, args.size, args.size) * 2 - 1
    y = torch.rand(args.batch, args.channels, args.size, args.size) * 2 - 1
    labels = torch.randint(0, 10, (args.batch,))
    for _ in range(args.warmup):
        model.train_step(x, labels, y)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.iters):
        model.train_step(x, labels, y)
    synchronize(device)
    return (time.perf_counter() - started) / args.iters


def time_translation(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds per translated batch of ``--translate-batch`` images."""
    gan = gan_params(args)
    generator = CycleGan(gan, args.channels, build_task_model("small_cnn", args.channels, 10, width=4),
                         Precision(device), seed=0).nets.G.eval()
    x = torch.rand(args.translate_batch, args.channels, args.size, args.size, device=device) * 2 - 1
    with torch.inference_mode():
        for _ in range(args.warmup):
            generator(x)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.iters):
            generator(x)
        synchronize(device)
    return (time.perf_counter() - started) / args.iters


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--width", type=int, default=16, help="generator and discriminator base width")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--downsamplings", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2, help="discriminator layers")
    ap.add_argument("--task-width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--translate-batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--only", choices=sorted(VARIANTS), action="append", help="time only these variants")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    print(f"# {args.size}x{args.size}x{args.channels}  width {args.width}  blocks {args.blocks}  "
          f"batch {args.batch}  threads {torch.get_num_threads()}  device {device}  amp {args.amp}  "
          f"channels_last {args.channels_last}  compile {args.compile}  torch {torch.__version__}")
    print(f"{'workload':<28}{'ms/iter':>10}{'it/s':>8}{'images/s':>10}")
    for name in args.only or VARIANTS:
        seconds = time_training(args, VARIANTS[name], device)
        print(f"{'train: ' + name:<28}{seconds * 1e3:>10.1f}{1 / seconds:>8.2f}{args.batch / seconds:>10.1f}")
    seconds = time_translation(args, device)
    print(f"{'translate (batch %d)' % args.translate_batch:<28}{seconds * 1e3:>10.1f}{1 / seconds:>8.2f}"
          f"{args.translate_batch / seconds:>10.1f}")


if __name__ == "__main__":
    main()
