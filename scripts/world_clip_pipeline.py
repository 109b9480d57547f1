"""Train, plant and measure a world-clip candidate in one command, resumably (issue #17's GPU run).

    python scripts/world_clip_pipeline.py --out runs/w96 --device cuda --workers 15 \\
        --image-size 96 --vision-layers 6 --vision-width 256 --plant-blocks 2,3,5

Six stages, each a run of one of the scripts beside this one, each skipped when its output exists (so a run that
was stopped, or that ran out of a lent machine's time, goes on where it stopped when given the same settings; a
stage stopped midway starts again, so each must fit one sitting; other settings than ``--device``, ``--workers``
and ``--threads`` for an existing ``--out`` are refused):

1. ``base``: ``train_world_clip.py`` from scratch (``--base-steps`` steps of ``--batch`` images);
2. ``base-truth``: ``validate_world_clip.py`` on it: zero-shot accuracy and its ground truth, written beside it;
3. ``plan``: ``plant_world_clip.py``: which of its neurons to plant with which concepts (``--plant-blocks``;
   ``--plan-args``, by default ``--closed``: the plan that met CLIP-Dissect's bar, docs/validation.md);
4. ``planted``: ``train_world_clip.py --init-from base --plant plan.json`` (``--plant-steps``, a fresh stream);
5. ``planted-truth``: ``validate_world_clip.py --plant plan.json``: the planted neurons' held-out AUROC;
6. ``figures``: ``method_figures.py``: every method on the known answers.

``OUT/pipeline.json`` records each stage's command, seconds and exit status; ``OUT/logs/<stage>.log`` its output.
Settings this script does not name go to a stage through ``--base-args``, ``--plan-args``, ``--plant-args``,
``--validate-args`` and ``--figures-args`` (one quoted string each, e.g. ``--figures-args "--probe 2000"``). A stage
that fails stops the pipeline with its exit status and the end of its log.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Settings that set the pace, not the result (the stream of batches is the same on any device and with any number
#: of rendering processes): a run may be resumed with other values of these.
PACE = ("device", "workers", "threads")


def stages(args: argparse.Namespace) -> list[tuple[str, list[str], Path]]:
    """(name, command, the file whose presence means the stage is done), in order."""
    out, device = args.out, ["--device", args.device]
    tower = ["--image-size", str(args.image_size), "--vision-layers", str(args.vision_layers)]
    tower += ["--vision-width", str(args.vision_width)]
    train = [sys.executable, str(HERE / "train_world_clip.py"), *device, "--workers", str(args.workers), *tower]
    train += ["--batch", str(args.batch), "--threads", str(args.threads)]
    validate = [sys.executable, str(HERE / "validate_world_clip.py"), *device, "--recipes", ""]
    validate += shlex.split(args.validate_args)
    base, planted, plan = out / "base", out / "planted", out / "plan.json"
    return [
        (
            "base",
            [*train, "--out", str(base), "--steps", str(args.base_steps), "--seed", str(args.seed)]
            + shlex.split(args.base_args),
            base / "training_log.json",
        ),
        (
            "base-truth",
            [*validate, "--model", str(base), "--json", str(base / "validation.json")],
            base / "validation.json",
        ),
        (
            "plan",
            [sys.executable, str(HERE / "plant_world_clip.py"), *device, "--model", str(base), "--out", str(plan)]
            + ["--blocks", args.plant_blocks]
            + shlex.split(args.plan_args),
            plan,
        ),
        (
            "planted",
            [*train, "--out", str(planted), "--init-from", str(base), "--plant", str(plan)]
            + ["--steps", str(args.plant_steps), "--seed", str(args.seed + 16)]
            + shlex.split(args.plant_args),
            planted / "training_log.json",
        ),
        (
            "planted-truth",
            [*validate, "--model", str(planted), "--plant", str(plan), "--json", str(planted / "validation.json")],
            planted / "validation.json",
        ),
        (
            "figures",
            [sys.executable, str(HERE / "method_figures.py"), *device, "--model", str(planted)]
            + ["--json", str(planted / "method_figures.json"), "--threads", str(args.threads)]
            + shlex.split(args.figures_args),
            planted / "method_figures.json",
        ),
    ]


def run_stage(name: str, command: list[str], log: Path) -> tuple[int, float]:
    """Run ``command``, its output to ``log`` (and a line per stage to the console); (exit status, seconds)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {shlex.join(command)}", flush=True)
    started = time.time()
    with log.open("w") as stream:
        status = subprocess.call(command, stdout=stream, stderr=subprocess.STDOUT)
    return status, round(time.time() - started, 1)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a directory for every stage's outputs")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (every stage runs there)")
    ap.add_argument("--workers", type=int, default=1, help="processes rendering the world while training")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each stage")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--vision-width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--base-steps", type=int, default=8000, help="the H100 run that learned the background: 8000")
    ap.add_argument("--plant-steps", type=int, default=1500)
    ap.add_argument("--plant-blocks", default="1,2,3", help="blocks of the three groups of planted concepts")
    ap.add_argument("--seed", type=int, default=0, help="the base run's stream; the planting fine-tune's is seed + 16")
    ap.add_argument("--base-args", default="", help="more train_world_clip.py settings for the base run")
    ap.add_argument(
        "--plan-args",
        default="--closed",
        help="more plant_world_clip.py settings (default: each block's planted concepts closed under their factors "
        "and refinements)",
    )
    ap.add_argument(
        "--plant-args",
        default="--plant-weight 2 --prompt-weight 1 --warmup 30 --lr 5e-4",
        help="more train_world_clip.py settings for the planting fine-tune (default: the shipped v2's)",
    )
    ap.add_argument("--validate-args", default="", help="more validate_world_clip.py settings")
    ap.add_argument("--figures-args", default="", help="more method_figures.py settings")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    for name in [k for k in vars(args) if k.endswith("_args")]:  # each stage's quoted settings
        try:
            shlex.split(getattr(args, name))
        except ValueError as e:  # an unbalanced quote: refused before any stage runs
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)!r}: {e}; give one quoted string of settings")
    record_path = args.out / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"stages": {}}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    before = record.get("settings", settings)
    changed = sorted(k for k in settings if k not in PACE and before.get(k) != settings[k])
    if changed:  # a finished stage would be kept and the record would name settings it was not made with
        shown = ", ".join(f"--{k.replace('_', '-')} {before.get(k)!r} (now {settings[k]!r})" for k in changed)
        sys.exit(f"{args.out} was made with other settings: {shown}; give the same ones to resume, or a new --out")
    record["settings"] = settings
    for name, command, done in stages(args):
        if done.is_file():
            print(f"[{name}] done already ({done})", flush=True)
            continue
        status, seconds = run_stage(name, command, args.out / "logs" / f"{name}.log")
        record["stages"][name] = {"command": shlex.join(command), "seconds": seconds, "status": status}
        args.out.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        if status != 0 or not done.is_file():
            tail = (args.out / "logs" / f"{name}.log").read_text().splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            print(f"stage '{name}' failed (exit status {status}); its log: {args.out / 'logs' / f'{name}.log'}")
            sys.exit(status or 1)
        print(f"[{name}] {seconds} s", flush=True)
    print(f"all stages done: {args.out}")


if __name__ == "__main__":
    main()
