"""Side-by-side throughput: our CycleGAN iteration against the textbook one, and translation.

Four training workloads run in the same process, in interleaved rounds (so a slower or busier
moment of the machine hits all of them alike); each round times ``--iters`` iterations of each:

* ``textbook``            the public CycleGAN iteration, one network call per batch
                          (:class:`pipeline.gan.reference.ReferenceCycleGan`, balancing weights 0);
* ``ours plain``          :class:`pipeline.gan.cycle_gan.CycleGan` with the same weights;
* ``textbook + balance``  the reference with every balancing term (similarity, task, Lipschitz);
* ``ours all terms``      ``CycleGan.train_step`` with every term: what ``train_gan`` runs;
* ``ours one-sided``      the same with ``gan.structure: one_sided`` (G and D_real only; the
                          adversarial, identity, similarity, task and Lipschitz terms, no cycle):
                          the SimGAN refiner, with the same G. Its ratio to ``ours all terms`` is
                          printed below the table.

Both sides use the same network classes and start from the same weights; images/s counts source
images; the ratio column is against ``textbook``. Translation compares the textbook inference (one
image per call under ``torch.no_grad``) with ours (``--translate-batch`` images per call under
``torch.inference_mode``). The defaults are the reference architecture (32 px RGB, width 32, six
residual blocks, three-layer PatchGAN, batch 16); the pipeline's default config is

    python bench/bench_gan.py --channels 1 --width 16 --blocks 3 --layers 2

``--prepared data/prepared`` (after ``dvc repro prepare``; with ``--channels``/``--size`` of its
params) adds ``ours, stage data``: the same iteration fed through the stage's own data path
(:class:`pipeline.gan.trainer.GanData` and its seeded samplers, images decoded in memory once), so
the table shows what the data path costs. Every workload runs with the CPU settings of the stages
(:func:`pipeline.cpu.configure_cpu`); ``--keep-denormals`` turns the denormal flush off. Thread
settings beside a busy process: ``bench/bench_threads.py``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from typing import Callable

import pipeline  # noqa: F401  (before torch: the stages' OpenMP settings, see pipeline/__init__.py)
import torch

from pipeline.config import DiscriminatorParams, GanParams, GeneratorParams, LossWeights, load_params
from pipeline.cpu import configure_cpu
from pipeline.distributed import resolve_device
from pipeline.gan.networks import ResnetGenerator
from pipeline.gan.reference import ReferenceCycleGan, translate_one_by_one
from pipeline.gan.cycle_gan import CycleGan, Precision
from pipeline.task.kinds import KINDS
from pipeline.task.models import build_task_model

PLAIN = {"similarity": 0.0, "task": 0.0, "lipschitz": 0.0}


ONE_SIDED = {"cycle": 0.0}


def gan_params(args: argparse.Namespace, weights: dict[str, float], structure: str = "cycle") -> GanParams:
    return GanParams(generator=GeneratorParams(args.width, args.blocks, args.downsamplings),
                     discriminator=DiscriminatorParams(args.width, args.layers), batch_size=args.batch,
                     weights=dataclasses.replace(LossWeights(), **weights), amp=args.amp,
                     channels_last=args.channels_last, compile=args.compile, structure=structure)


def our_model(args: argparse.Namespace, weights: dict[str, float], device: torch.device,
              classes: int = 10, structure: str = "cycle") -> CycleGan:
    """``CycleGan`` as the stage builds it, with a fresh SmallCNN as T (seeded: same weights every call)."""
    torch.manual_seed(0)
    task = build_task_model("small_cnn", args.channels, classes, width=args.task_width)
    gan = gan_params(args, weights, structure)
    return CycleGan(gan, args.channels, task, KINDS["classification"], Precision(device, gan.amp, gan.channels_last),
                    seed=0)


def training_workloads(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], None]]:
    """name -> one training iteration on fixed random batches."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, args.channels, args.size, args.size, generator=g) * 2 - 1).to(device)
    y = (torch.rand(args.batch, args.channels, args.size, args.size, generator=g) * 2 - 1).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    workloads = {}
    for suffix, weights in (("plain", PLAIN), ("all terms", {})):
        ours = our_model(args, weights, device)
        reference = ReferenceCycleGan(ours.gan, copy.deepcopy(ours.nets), ours.task_model,
                                      lipschitz_rng=torch.Generator(device).manual_seed(0))
        name = "textbook" if suffix == "plain" else "textbook + balance"
        workloads[name] = lambda r=reference: r.train_step(x, labels, y)
        workloads[f"ours {suffix}"] = lambda o=ours: o.train_step(x, labels, y)
    one_sided = our_model(args, ONE_SIDED, device, structure="one_sided")
    workloads["ours one-sided"] = lambda: one_sided.train_step(x, labels, y)
    order = ["textbook", "ours plain", "textbook + balance", "ours all terms", "ours one-sided"]
    if args.prepared:
        workloads["ours, stage data"] = stage_data_workload(args, device)
        order.append("ours, stage data")
    return {k: workloads[k] for k in order}


def stage_data_workload(args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """``ours all terms`` with each batch drawn as ``GanTrainer.train_epoch`` draws it."""
    from pipeline.data.sampling import DomainSampler
    from pipeline.gan.trainer import GanData
    from pipeline.task.kinds import task_kind

    params = load_params(args.params)
    if (params.data.channels, params.data.image_size) != (args.channels, args.size):
        raise SystemExit(f"--prepared: {args.params} has {params.data.channels} channel(s) at "
                         f"{params.data.image_size} px; pass --channels/--size to match")
    data, kind = GanData.from_prepared(args.prepared, params), task_kind(params)
    steps = 10_000
    source = DomainSampler(data.source, "source", args.batch, steps, 0, collate=kind.collate)
    target = DomainSampler(data.target, "target", args.batch, steps, 0, collate=kind.collate)
    source_idx, target_idx = source.epoch_indices(0), target.epoch_indices(0)
    model = our_model(args, {}, device, classes=len(params.data.classes))
    step = iter(range(steps))

    def run() -> None:
        i = next(step)
        x, labels = source.load(source_idx[i])
        y, _ = target.load(target_idx[i])
        model.train_step(x, labels, y)
    return run


def translation_workloads(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], None]]:
    generator = ResnetGenerator(args.channels, args.channels, args.width, args.blocks, args.downsamplings)
    generator = generator.to(device).eval()
    x = torch.rand(args.translate_batch, args.channels, args.size, args.size, device=device) * 2 - 1

    def ours() -> None:
        with torch.inference_mode():
            generator(x)
    return {"textbook (1 per call)": lambda: translate_one_by_one(generator, x), "ours (batched)": ours}


def interleaved(workloads: dict[str, Callable[[], None]], rounds: int, iters: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each workload, one sample per round; rounds alternate the workloads."""
    for fn in workloads.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    for r in range(rounds):
        names = list(workloads) if r % 2 == 0 else list(reversed(workloads))
        for name in names:
            synchronize(device)
            started = time.perf_counter()
            for _ in range(iters):
                workloads[name]()
            synchronize(device)
            samples[name].append((time.perf_counter() - started) / iters)
    return samples


def print_table(title: str, samples: dict[str, list[float]], images: int, baseline: str) -> None:
    base = images / statistics.median(samples[baseline])
    print(f"{title:<24}{'ms/call':>10}{'images/s':>10}{'min-max images/s':>20}{'ratio':>8}")
    for name, s in samples.items():
        rate = images / statistics.median(s)
        spread = f"{images / max(s):.1f}-{images / min(s):.1f}"
        print(f"{name:<24}{statistics.median(s) * 1e3:>10.1f}{rate:>10.1f}{spread:>20}{rate / base:>7.2f}x")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def parser() -> argparse.ArgumentParser:
    """The bench's options (``bench/bench_threads.py`` builds its model from them too)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--width", type=int, default=32, help="generator and discriminator base width")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--downsamplings", type=int, default=2)
    ap.add_argument("--layers", type=int, default=3, help="discriminator layers")
    ap.add_argument("--task-width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--translate-batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=4, help="iterations per workload and round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-translation", action="store_true")
    ap.add_argument("--prepared", default=None, help="a prepared data folder: adds the stage's data path")
    ap.add_argument("--params", default="params.yaml", help="the params of --prepared")
    ap.add_argument("--keep-denormals", action="store_true", help="do not flush denormals to zero")
    return ap


def main() -> None:
    args = parser().parse_args()
    cpu = configure_cpu() if not args.keep_denormals else {"flush_denormal": False}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    print(f"# {args.size}x{args.size}x{args.channels}  width {args.width}  blocks {args.blocks}  layers {args.layers}  "
          f"batch {args.batch}  threads {torch.get_num_threads()}  device {device}  amp {args.amp}  "
          f"channels_last {args.channels_last}  compile {args.compile}  flush denormals {cpu['flush_denormal']}  "
          f"torch {torch.__version__}  "
          f"({args.rounds} interleaved rounds of {args.iters} iterations, median)")
    samples = interleaved(training_workloads(args, device), args.rounds, args.iters, args.warmup, device)
    print_table("train iteration", samples, args.batch, "textbook")
    plain, balanced = (args.batch / statistics.median(samples[k]) for k in ("ours plain", "ours all terms"))
    textbook, textbook_balanced = (args.batch / statistics.median(samples[k]) for k in ("textbook", "textbook + balance"))
    print(f"ours all terms / textbook + balance: {balanced / textbook_balanced:.2f}x;  "
          f"cost of the balancing terms: ours {plain / balanced - 1:+.0%}, textbook {textbook / textbook_balanced - 1:+.0%}")
    one_sided = args.batch / statistics.median(samples["ours one-sided"])
    print(f"ours one-sided / ours all terms (same G, two-sided): {one_sided / balanced:.2f}x")
    if not args.skip_translation:
        samples = interleaved(translation_workloads(args, device), args.rounds, 1, 1, device)
        print_table("translate", samples, args.translate_batch, "textbook (1 per call)")


if __name__ == "__main__":
    main()
