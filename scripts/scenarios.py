"""Run the default pipeline on every scenario of the suite and write one scorecard (not CI: ~2 hours).

    .venv/bin/python scripts/scenarios.py                       # every scenario, then the scorecard
    .venv/bin/python scripts/scenarios.py --only fonts camera   # some of them
    .venv/bin/python scripts/scenarios.py --collect-only        # the scorecard from what already ran
    .venv/bin/python scripts/scenarios.py --only builtin --pipeline-seed 1   # another seed: builtin-seed1/
    .venv/bin/python scripts/scenarios.py --rerun train_task@randomized_st evaluate@randomized_st report
    .venv/bin/python scripts/scenarios.py --only photo --labels 5 --skip translated dann   # 5 labelled real
                                                                # images per class: <name>-labels5/, a table of their own

Each scenario (``scripts/make_scenario.py``) is its own workspace, ``<out>/<name>/``: the project's
code and ``dvc.yaml`` copied in, ``params.yaml`` the project's own with the scenario's ``data``
section, the scenario's folders under ``scenario/``. ``dvc repro`` there reruns only what a change
touches (DVC hashes the copied code), so after changing a default the suite reruns only the
variants it affects. Scenarios run one after another (two trainings at once slow each other far
more than twice), with MLflow tracking off.

The scorecard (``<out>/scorecard.{md,json}``) has per scenario every variant's held-out test
accuracy, the label-free pick, source-only and the oracle, the share of the gap the pick closes and
the wall time. It also stores, per variant, a DEV READ: accuracy and predictions on the scenario's
labelled real *training* split (``data/prepared/target/train``), which ``scripts/pick_rules.py`` and
tuning use, never the test split. What this prints about the test split is a report, not a choice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from make_scenario import SCENARIOS   # scripts/ is on the path of a script run from it

ROOT = Path(__file__).resolve().parents[1]

CODE = ("pipeline", "stages", "dvc.yaml")
ORDER = ("fonts", "grey", "photo", "camera", "imbalanced", "small", "builtin")
DEV_SPLIT = "data/prepared/target/train"
CARD = "scorecard.json"
# With --labels K: the variants that train on the K labelled real images per class (as README "A few
# labelled real images" shows them), added to the project's own.
FEW_LABEL_VARIANTS = {
    "few_labels": {"method": "supervised", "train": "data/prepared/source/train", "augment": "strong",
                   "labelled_batch": 16, "target_bn": True},
}


def sync_code(workspace: Path) -> None:
    """Copy the project's code and dvc.yaml into ``workspace`` (files whose content is unchanged are
    left alone, so DVC sees no change there)."""
    for name in CODE:
        src = ROOT / name
        if src.is_file():
            _copy_if_changed(src, workspace / name)
            continue
        wanted = {p.relative_to(src) for p in src.rglob("*.py")}
        for rel in wanted:
            _copy_if_changed(src / rel, workspace / name / rel)
        for stale in (workspace / name).rglob("*.py"):
            if stale.relative_to(workspace / name) not in wanted:
                stale.unlink()


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def scenario_params(data: dict) -> dict:
    """The project's params.yaml with the scenario's ``data`` keys merged in (nested dicts merged)."""
    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return out

    return merge(yaml.safe_load((ROOT / "params.yaml").read_text()), data)


def workspace_name(name: str, pipeline_seed: int, labels: int = 0) -> str:
    """``<name>`` for the pipeline's own seed (params.yaml's, 0) without labelled real images,
    ``<name>-seed<N>`` for another seed, ``...-labels<K>`` with K labelled real images per class."""
    return name + (f"-seed{pipeline_seed}" if pipeline_seed else "") + (f"-labels{labels}" if labels else "")


def few_label_params(params: dict, labels: int, skip: Sequence[str] = ()) -> dict:
    """``params`` with ``labels`` labelled real images per class and :data:`FEW_LABEL_VARIANTS` (the
    project's self-training variant, ``randomized_st``, also as ``few_labels_st``: the same settings
    plus the labelled batch), less the ``skip`` variants."""
    variants = dict(params["variants"])
    if labels:
        params = {**params, "data": {**params["data"], "target": {**params["data"]["target"],
                                                                  "labelled_per_class": labels}}}
        variants.update(FEW_LABEL_VARIANTS)
        variants["few_labels_st"] = {**variants["randomized_st"], "labelled_batch": 16}
    return {**params, "variants": {k: v for k, v in variants.items() if k not in skip}}


def prepare_workspace(name: str, out: Path, seed: int, pipeline_seed: int = 0, labels: int = 0,
                      skip: Sequence[str] = ()) -> Path:
    """``<out>/<name>/`` (:func:`workspace_name`) with the scenario's folders (built once), its params
    (``seed: pipeline_seed``, ``labels`` per class, less the ``skip`` variants) and the current code."""
    workspace = out / workspace_name(name, pipeline_seed, labels)
    built = workspace / "scenario" / "BUILT.json"
    if built.is_file():
        data = json.loads(built.read_text())
    else:
        shutil.rmtree(workspace / "scenario", ignore_errors=True)
        data = SCENARIOS[name](workspace / "scenario", seed)
        built.parent.mkdir(parents=True, exist_ok=True)
        built.write_text(json.dumps(data, indent=1))
    sync_code(workspace)
    params = few_label_params({**scenario_params(data), "seed": pipeline_seed}, labels, skip)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (workspace / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=workspace, check=True)
    return workspace


def repro(workspace: Path, stage: str | None = None, only: Sequence[str] = ()) -> float:
    """``dvc repro [stage]`` in ``workspace`` (tracking off), or ``dvc repro --single-item`` of each
    stage of ``only`` in turn; returns the wall seconds."""
    env = {**os.environ, "SIM2REAL_TRACKING": "off", "NO_ALBUMENTATIONS_UPDATE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    commands = [["repro", "--single-item", name] for name in only] or [["repro", *([stage] if stage else [])]]
    with open(workspace / "repro.log", "w") as log:
        for command in commands:
            subprocess.run([sys.executable, "-m", "dvc", *command], cwd=workspace, env=env, check=True,
                           stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def dev_read(workspace: Path, variants: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[int]]:
    """DEV READ: each variant's accuracy and predicted classes on the labelled real *training* split,
    and that split's labels."""
    import numpy as np

    from pipeline.config import load_params
    from pipeline.data.manifest import ImageSet
    from pipeline.task.classification import predict
    from pipeline.task.export import load_task_model

    d = load_params(workspace / "params.yaml").data
    dev = ImageSet(workspace / DEV_SPLIT, d.classes, d.channels, d.image_size)
    found = {}
    for variant in variants:
        path = workspace / "models" / "task" / variant / "model.pt"
        if path.is_file():
            model, _ = load_task_model(path)
            out = predict(model, dev)
            found[variant] = {"dev_accuracy": float(np.mean(out.predicted == out.labels)),
                              "dev_predicted": out.predicted.tolist()}
    return found, [int(y) for y in dev.targets()]


def collect(workspace: Path, seconds: float | None) -> dict[str, Any]:
    """One scenario's card: the report's summary, each variant's training record and the dev read."""
    summary = json.loads((workspace / "reports" / "summary.json").read_text())
    variants = [v for v in summary if v != "pick"]
    train = {v: json.loads((workspace / "reports" / "train" / v / "metrics.json").read_text()) for v in variants
             if (workspace / "reports" / "train" / v / "metrics.json").is_file()}
    dev, dev_labels = dev_read(workspace, variants)
    card = {"pick": summary["pick"], "repro_seconds": seconds, "dev_labels": dev_labels,
            "variants": {}}
    for v in variants:
        t = train.get(v, {})
        card["variants"][v] = {**summary[v], "train_seconds": t.get("train_seconds"), "warnings": t.get("warnings", []),
                               "uses_target_labels": t.get("uses_target_labels"),
                               "few_target_labels": t.get("few_target_labels", False),
                               "labelled_pick": t.get("labelled_pick"),
                               "final_train_acc": t.get("final", {}).get("train_acc"),
                               "label_free": t.get("label_free", {}), **dev.get(v, {})}
    return card


def gap(card: dict) -> float | None:
    """Share of the source-only -> oracle gap the pick closes on the test split (the pick falls back
    to source_only when it chose none); None when a bound was not evaluated (a partly run workspace)."""
    v = card["variants"]
    pick = card["pick"]["variant"] or "source_only"
    if "source_only" not in v or "target_oracle" not in v:
        return None
    low, high = v["source_only"]["accuracy"], v["target_oracle"]["accuracy"]
    return None if high <= low else (v[pick]["accuracy"] - low) / (high - low)


def seeds_markdown(cards: dict[str, dict], seeded: dict[str, dict]) -> str:
    """The pick per pipeline seed for the scenarios run with other seeds (``<name>-seed<N>`` workspaces,
    seed 0 from the main card), with the mean over the seeds; ``""`` when there are none."""
    if not seeded:
        return ""
    runs: dict[str, dict[int, dict]] = {}
    for folder, card in seeded.items():
        name, _, seed = folder.rpartition("-seed")
        runs.setdefault(name, {})[int(seed)] = card
    lines = ["", "| scenario | seed | pick | its accuracy | source_only | target_oracle | gap closed |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for name, by_seed in sorted(runs.items()):
        if name in cards:
            by_seed[0] = cards[name]
        picked = []
        for seed, card in sorted(by_seed.items()):
            v, pick = card["variants"], card["pick"]["variant"] or "source_only"
            picked.append(v[pick]["accuracy"])
            g = gap(card)
            lines.append(f"| {name} | {seed} | {pick} | {v[pick]['accuracy']:.3f} | {v['source_only']['accuracy']:.3f} | "
                         f"{v['target_oracle']['accuracy']:.3f} | {'n/a' if g is None else f'{g:.0%}'} |")
        lines.append(f"| {name} | mean of {len(picked)} | | {sum(picked) / len(picked):.3f} | | | |")
    return "\n".join(lines) + "\n"


def labels_markdown(labelled: Sequence[dict], cards: dict[str, dict]) -> str:
    """The runs with K labelled real images per class: per scenario, seed and K the pick (by accuracy on
    the labelled pick images), its test accuracy, the best variant's, and the gap the pick closes; the
    label-free run of the same scenario (seed 0, K = 0) first when there is one. ``""`` when none ran."""
    if not labelled:
        return ""
    rows = [{**c, "scenario": n, "seed": 0, "labels": 0} for n, c in cards.items()
            if any(l["scenario"] == n for l in labelled)] + list(labelled)
    lines = ["", "| scenario | seed | labels per class | pick | its accuracy | best variant | its accuracy | "
                 "source_only | target_oracle | gap closed by the pick |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---:|"]
    for card in sorted(rows, key=lambda c: (c["scenario"], c["seed"], c["labels"])):
        v, pick = card["variants"], card["pick"]["variant"] or "source_only"
        fair = {k: r for k, r in v.items() if r.get("uses_target_labels") is False or r.get("few_target_labels")}
        best = max(fair, key=lambda k: fair[k]["accuracy"])
        g = gap(card)
        lines.append(f"| {card['scenario']} | {card['seed']} | {card['labels']} | {pick} | {v[pick]['accuracy']:.3f} | "
                     f"{best} | {v[best]['accuracy']:.3f} | {v['source_only']['accuracy']:.3f} | "
                     f"{v['target_oracle']['accuracy']:.3f} | {'n/a' if g is None else f'{g:.0%}'} |")
    return "\n".join(lines) + "\n"


def plot_labels_curve(labelled: Sequence[dict], cards: dict[str, dict], path: Path) -> Path | None:
    """The pick's test accuracy against labelled real images per class (seed 0; K = 0 from the label-free
    card), one line per scenario with at least two K, the oracle dashed: ``path`` (None when nothing to draw)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points: dict[str, dict[int, tuple[float, float]]] = {}
    for card in [*({**c, "scenario": n, "seed": 0, "labels": 0} for n, c in cards.items()), *labelled]:
        if card["seed"] == 0:
            v, pick = card["variants"], card["pick"]["variant"] or "source_only"
            points.setdefault(card["scenario"], {})[card["labels"]] = (v[pick]["accuracy"],
                                                                        v["target_oracle"]["accuracy"])
    points = {n: p for n, p in points.items() if len(p) >= 2}
    if not points:
        return None
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, by_k in sorted(points.items()):
        ks = sorted(by_k)
        line, = ax.plot(ks, [by_k[k][0] for k in ks], marker="o", label=name)
        ax.axhline(by_k[ks[-1]][1], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("labelled real images per class")
    ax.set_ylabel("the pick's accuracy (held-out real test split)")
    ax.set_title("what a few real labels buy (dashed: target_oracle)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def scorecard_markdown(cards: dict[str, dict]) -> str:
    found = list(dict.fromkeys(v for c in cards.values() for v in c["variants"]))
    order = list(yaml.safe_load((ROOT / "params.yaml").read_text())["variants"])    # as params.yaml lists them
    variants = [v for v in order if v in found] + [v for v in found if v not in order]
    lines = ["| scenario | " + " | ".join(variants) + " | pick | gap closed by the pick | wall |",
             "|---|" + "---:|" * len(variants) + "---|---:|---:|"]
    gaps = []
    for name, card in cards.items():
        cells = []
        for v in variants:
            row = card["variants"].get(v)
            cells.append("n/a" if row is None else f"{row['accuracy']:.3f}")
        g = gap(card)
        gaps.append(g)
        pick = card["pick"]["variant"] or "none (source_only)"
        wall = "n/a" if card.get("repro_seconds") is None else f"{card['repro_seconds'] / 60:.1f} min"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {pick} | {'n/a' if g is None else f'{g:.0%}'} | {wall} |")
    known = [g for g in gaps if g is not None]
    if known:
        lines += ["", f"Gap closed by the pick: mean {sum(known) / len(known):.0%}, worst {min(known):.0%} "
                      f"over {len(known)} scenario(s). Accuracies: held-out real test split (report only)."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scenarios")
    ap.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=None)
    ap.add_argument("--seed", type=int, default=0, help="seed of the scenario folders")
    ap.add_argument("--pipeline-seed", type=int, default=0,
                    help="params.yaml's seed in the workspaces (not 0: workspaces <name>-seed<N>, a table of their own)")
    ap.add_argument("--collect-only", action="store_true", help="no runs: the scorecard of the finished workspaces")
    ap.add_argument("--stage", default=None, help="only `dvc repro STAGE` (e.g. prepare, for dev reads); no scorecard")
    ap.add_argument("--labels", type=int, default=0, metavar="K",
                    help="K labelled real images per class (data.target.labelled_per_class) and the variants that train "
                         "on them: workspaces <name>[-seed<N>]-labels<K>, a table of their own")
    ap.add_argument("--skip", nargs="+", default=(), metavar="VARIANT",
                    help="leave these variants out of the workspaces' params (to save time; the card lists them)")
    ap.add_argument("--rerun", nargs="+", default=(), metavar="STAGE",
                    help="only these stages, each `dvc repro --single-item` (for a change that touches only them; "
                         "the others are kept as they are, and the wall time is theirs alone), then the scorecard")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    names = args.only or list(ORDER)
    for name in names if not args.collect_only else ():
        print(f"== {name}", file=sys.stderr, flush=True)
        workspace = prepare_workspace(name, out, args.seed, args.pipeline_seed, args.labels, args.skip)
        seconds = repro(workspace, args.stage or ("report" if args.skip else None), args.rerun)
        if args.stage:
            continue
        card = collect(workspace, None if args.rerun else seconds)
        card.update(scenario=name, seed=args.pipeline_seed, labels=args.labels, skipped=list(args.skip))
        if args.rerun:           # the wall time of the last full run stays the scenario's
            old = json.loads((workspace / CARD).read_text()) if (workspace / CARD).is_file() else {}
            card["repro_seconds"] = old.get("repro_seconds")
            card["rerun"] = {"stages": list(args.rerun), "seconds": round(seconds, 1)}
        (workspace / CARD).write_text(json.dumps(card))
        print(f"   {name}: pick {card['pick']['variant']}, gap closed {gap(card)}, {seconds:.0f} s",
              file=sys.stderr, flush=True)
    if args.stage:
        return
    cards = {n: json.loads((out / n / CARD).read_text()) for n in ORDER if (out / n / CARD).is_file()}
    if not cards and not list(out.glob(f"*-labels*/{CARD}")):
        sys.exit(f"error: no {CARD} under {out}; run the suite first")
    (out / "scorecard.json").write_text(json.dumps({n: {k: v for k, v in c.items() if k != "dev_labels"}
                                                    for n, c in cards.items()}, indent=1))
    seeded = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob(f"*-seed*/{CARD}"))
              if "-labels" not in p.parent.name}
    labelled = [json.loads(p.read_text()) for p in sorted(out.glob(f"*-labels*/{CARD}"))]
    text = scorecard_markdown(cards) + seeds_markdown(cards, seeded) + labels_markdown(labelled, cards)
    plot_labels_curve(labelled, cards, out / "labels_curve.png")
    (out / "scorecard.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
