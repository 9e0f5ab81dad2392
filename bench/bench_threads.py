"""CPU settings for training: thread count and OpenMP wait policy, alone and beside a busy process.

Each cell runs the real ``CycleGan.train_step`` (the pipeline's default GAN config unless told
otherwise) in a fresh child process, because the OpenMP runtime reads ``OMP_WAIT_POLICY`` and
``OMP_NUM_THREADS`` once, when torch loads. "busy" starts one pure-Python spinning process first,
the situation of a second job, a test run or an editor's indexer on a two-core machine.

    python bench/bench_threads.py                 # the table of docs/results.md, "CPU settings"
    python bench/bench_threads.py --iters 20 --width 32 --blocks 6 --layers 3 --channels 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch  # before pipeline, whose package would otherwise set OMP_WAIT_POLICY for the cell
sys.path.insert(0, sys.argv[2])
from bench_gan import our_model, parser
a = json.loads(sys.argv[1])
args = parser().parse_args(["--width", str(a["width"]), "--blocks", str(a["blocks"]), "--layers", str(a["layers"]),
                            "--channels", str(a["channels"]), "--batch", str(a["batch"])])
model = our_model(args, {}, torch.device("cpu"))
g = torch.Generator().manual_seed(0)
batches = [(torch.rand(a["batch"], a["channels"], 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (a["batch"],), generator=g),
            torch.rand(a["batch"], a["channels"], 32, 32, generator=g) * 2 - 1) for _ in range(4)]
for i in range(2):
    model.train_step(*batches[i % 4])
started = time.perf_counter()
for i in range(a["iters"]):
    model.train_step(*batches[i % 4])
print(json.dumps({"images_per_s": a["iters"] * a["batch"] / (time.perf_counter() - started), "threads": torch.get_num_threads()}))
"""

BUSY = {  # what keeps the CPU busy beside the measured cell
    "python": "while True: pass",  # one core
    "torch": "import torch\na = torch.randn(512, 512)\nwhile True: a @ a",  # another torch job, same settings
}

SETTINGS = {  # name -> environment of the child
    "2 threads, OpenMP default wait": {"OMP_NUM_THREADS": "2"},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "2 threads, GOMP_SPINCOUNT=10000": {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"},
    "2 threads, GOMP_SPINCOUNT=50000": {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "50000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


def measure(env: dict[str, str], args: argparse.Namespace) -> float:
    child_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    child_env.update(env)
    config = {k: getattr(args, k) for k in ("width", "blocks", "layers", "channels", "batch", "iters")}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config), str(Path(__file__).parent)], env=child_env, check=True,
                         capture_output=True, text=True, timeout=args.timeout).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell (a starved cell is slow)")
    ap.add_argument("--busy", choices=sorted(BUSY), default="python",
                    help="the busy process: a pure-Python loop (one core) or another torch job with the same settings")
    ap.add_argument("--only", action="append", choices=sorted(SETTINGS), help="measure only these settings")
    args = ap.parse_args()
    print(f"# GAN train_step, width {args.width}, blocks {args.blocks}, layers {args.layers}, "
          f"{args.channels} channel(s), batch {args.batch}, {args.iters} iterations per cell; images/s")
    print(f"{'setting':<40}{'alone':>10}{'beside busy':>14}{'slowdown':>10}")
    for name, env in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        alone = measure(env, args)
        spinner = subprocess.Popen([sys.executable, "-c", BUSY[args.busy]], env={**os.environ, **env})
        try:
            time.sleep(0.5)
            busy = measure(env, args)
        finally:
            spinner.kill()
            spinner.wait()
        print(f"{name:<40}{alone:>10.1f}{busy:>14.1f}{alone / busy:>9.1f}x", flush=True)


if __name__ == "__main__":
    main()
