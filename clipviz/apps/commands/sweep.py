"""``clipviz sweep``: visualizations, top examples and words for every chosen neuron, then the atlas."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from clipviz.apps.options import add_model_parser, load_model
from clipviz.apps.validate import check_output_dir, int_type
from clipviz.errors import MAX_SAMPLES, MAX_SEED, MAX_STEPS, MAX_WORKERS


def add_parser(sub) -> None:
    sw = add_model_parser(
        sub,
        "sweep",
        "visualize, mine top examples and name every chosen neuron of a model, then build its atlas",
    )
    sw.add_argument("--out", required=True, help="results folder (a rerun resumes what is unfinished)")
    sw.add_argument("--blocks", help="blocks to sweep: 2:4, 1,3 (default: all)")
    sw.add_argument("--hooks", default="mlp.hook_post", help="hook points per block, comma-separated")
    sw.add_argument("--neurons", help="neurons per hook: 0:6, 1,5,9 (default: all)")
    sw.add_argument(
        "--dataset",
        help="images for the top examples: a folder, world:<n>, an HF dataset id or a saved dataset "
        "(default for the bundled world-clip: world:2000; required otherwise)",
    )
    sw.add_argument("--vocab", help="words for the direct lens: world, imagenet, cifar10, cifar100, words-<N>, a file")
    sw.add_argument("--templates", help="'ensemble' or '|'-separated prompt templates with one {} each")
    sw.add_argument("--probe", help="probe images for CLIP-Dissect words (the --dataset itself is reused for free)")
    sw.add_argument(
        "--recipe",
        help="visualization recipe (see clipviz visualize; default: vital, guided by the sweep's own top examples; "
        "'default' renders unguided)",
    )
    sw.add_argument(
        "--steps", type=int_type("--steps", 1, MAX_STEPS), help="optimisation steps per stage (the recipe's by default)"
    )
    sw.add_argument(
        "--samples", type=int_type("--samples", 1, MAX_SAMPLES), default=1, help="visualizations per neuron"
    )
    sw.add_argument(
        "--batch-size", type=int_type("--batch-size", 1, None), default=16, help="neurons optimised together"
    )
    sw.add_argument("--top-k", type=int_type("--top-k", 1, None), default=16, help="top examples per neuron")
    sw.add_argument("--words", type=int_type("--words", 1, None), default=5, help="words per neuron and method")
    sw.add_argument(
        "--shard-size", type=int_type("--shard-size", 1, None), default=1024, help="images per resumable examples shard"
    )
    sw.add_argument(
        "--workers",
        type=int_type("--workers", 0, MAX_WORKERS),
        default=min(8, max(1, (os.cpu_count() or 2) - 1)),
        help="processes that decode images for the examples (0: in the main process)",
    )
    sw.add_argument("--seed", type=int_type("--seed", 0, MAX_SEED), default=0)
    sw.add_argument("--site", help="atlas folder (default: OUT/atlas)")
    sw.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16", "bf16-weights", "fp16-weights"],
        help="as for clipviz visualize (auto: bf16 weights on a GPU, fp32 on the CPU)",
    )
    sw.add_argument(
        "--space",
        metavar="USER/NAME",
        help="then publish the atlas as this Hugging Face Space (as clipviz publish; the token is checked first)",
    )
    sw.add_argument("--private", action="store_true", help="with --space: a private Space")
    sw.add_argument(
        "--stage",
        metavar="DIR",
        help="then write the Space's folder (app, wheel, requirements, atlas) to DIR, a new or empty folder: what "
        "--space uploads, or without --space a Space to check or upload by hand (python DIR/app.py serves it)",
    )
    sw.add_argument("--dry-run", action="store_true", help="print the plan and the estimate; compute nothing")
    sw.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from clipviz.apps.sweep import default_dataset, describe, make_plan, measure, run_sweep
    from clipviz.errors import ClipvizError
    from clipviz.visualization.visualize import _precision

    if args.dataset is None and default_dataset(args.model) is None:  # before a long model download
        raise ClipvizError(
            f"--dataset is required for '{args.model}': a folder of images, an HF dataset id or a saved dataset "
            "(only a bundled model such as world-clip has a default: its world's held-out images)"
        )
    check_publishing(args)  # before the work, not after it
    check_output_dir(args.out)  # a file or an unwritable place, refused before the model loads (and in a dry run)
    if args.probe:  # a probe set too small for CLIP-Dissect, refused before the model loads
        from clipviz.analysis.dissect import open_probe

        open_probe(args.probe)
    model = load_model(args)
    plan = make_plan(
        model,
        args.out,
        blocks=args.blocks,
        hooks=args.hooks,
        neurons=args.neurons,
        dataset=args.dataset,
        vocab=args.vocab,
        templates=args.templates,
        probe=args.probe,
        recipe=args.recipe,
        steps=args.steps,
        samples=args.samples,
        batch_size=args.batch_size,
        top_k=args.top_k,
        words=args.words,
        shard_size=args.shard_size,
        seed=args.seed,
        site=args.site,
    )
    accelerator = Accelerator(cpu=model.device.type == "cpu", mixed_precision=_precision(args.precision, model))
    model = model.to(accelerator.device)
    plan.estimate = measure(model, plan, accelerator)
    if accelerator.is_main_process:
        print("\n".join(describe(model, plan)), flush=True)
    if args.dry_run:
        return 0
    site = run_sweep(model, plan, accelerator=accelerator, workers=args.workers)
    if accelerator.is_main_process:
        print(f"open {(site / 'index.html').resolve()}")
        if args.space or args.stage:
            from clipviz.apps.publish import publish

            publish(site, space=space_id(args), private=args.private, stage=args.stage, dry_run=args.space is None)
            if args.space:
                print(f"published https://huggingface.co/spaces/{args.space}")
            if args.stage:
                print(f"staged the Space in {args.stage} (python {Path(args.stage) / 'app.py'} serves it)")
    return 0


def space_id(args: argparse.Namespace) -> str:
    """``--space``, or for a Space only staged a local name made from the output folder's (its card's title)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.out).resolve().name).strip("-._")[:96] or "clipviz"
    return args.space or f"local/{name}"


def check_publishing(args: argparse.Namespace) -> None:
    """Refuse a bad Space id, a missing token or a --stage folder that is not new and empty, or that the sweep
    writes into, before any work."""
    from clipviz.apps.publish import check_repo
    from clipviz.apps.sweep import check_stage_place
    from clipviz.apps.validate import check_new_folder
    from clipviz.errors import ClipvizError
    from clipviz.results import sweep_paths

    if args.space is not None:
        check_repo(args.space, "Space")
        from huggingface_hub import get_token

        if not get_token() and not args.dry_run:  # a dry run publishes nothing: its plan needs no token
            raise ClipvizError(
                "--space needs a Hugging Face token: log in with `hf auth login` or set HF_TOKEN (checked "
                "before the sweep, so that its work is not lost)"
            )
    elif args.private:
        raise ClipvizError("--private is for --space: it makes the published Space private")
    if args.stage is not None:
        check_new_folder(args.stage, "--stage")
        site = Path(args.site) if args.site else sweep_paths(Path(args.out))["atlas"]
        check_stage_place(Path(args.stage), Path(args.out), site)
