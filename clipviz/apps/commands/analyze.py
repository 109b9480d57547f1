"""``clipviz analyze MODEL --study NAME --out DIR``: the analyses of "What do Vision Transformers Learn?".

Each study writes ``DIR/<study>.json`` (the figures per block, the claim tested, every setting) and
``DIR/<study>.png`` (a matplotlib plot), with a progress bar; ``--study all`` runs the six in turn.
"""

from __future__ import annotations

import argparse

from clipviz.apps.options import add_model_parser, load_model
from clipviz.apps.validate import check_output_dir, int_type
from clipviz.errors import MAX_SEED, MAX_STEPS

MAX_PROBE = 100_000  # probe images are held in memory at the model's input size

STUDY_NAMES = ("spatial", "pooling", "cls", "semantic", "frequency", "background")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    text = (
        "test the claims of 'What do Vision Transformers Learn?' on a model: spatial information per block, "
        "global pooling, CLS isolation, semantic vs visual neurons, frequency and background reliance"
    )
    p = add_model_parser(subparsers, "analyze", text)
    p.add_argument("--study", required=True, choices=[*STUDY_NAMES, "all"], help="which study (all: every one)")
    p.add_argument("--out", required=True, help="output folder: <study>.json and <study>.png are written there")
    p.add_argument(
        "--dataset",
        default="world",
        help="world (or world:N: the synthetic world, exact masks and "
        "factors), a folder of images (sub-folders as classes) or a Hugging Face dataset id or saved "
        "dataset (default: world)",
    )
    p.add_argument(
        "--samples", type=int_type("--samples", 1, MAX_PROBE), default=512, help="probe images to use (default 512)"
    )
    p.add_argument("--split", help="split of a Hugging Face dataset (default: train)")
    p.add_argument("--image-column")
    p.add_argument("--label-column", help="class column (default: 'label' if present)")
    p.add_argument("--caption-column", help="caption column (default: 'caption' or 'text' if present)")
    p.add_argument("--mask-column", help="foreground mask column (images; nonzero = foreground), for background")
    p.add_argument("--template", default="a photo of a {}.", help="zero-shot prompt for class names (CLIP models)")
    p.add_argument("--batch-size", type=int_type("--batch-size", 1, None), default=64)
    p.add_argument("--seed", type=int_type("--seed", 0, MAX_SEED), default=0)
    p.add_argument(
        "--steps",
        type=int_type("--steps", 0, MAX_STEPS),
        help="spatial: optimisation steps of the patch-position objective test (default 64; 0 skips it)",
    )
    p.add_argument(
        "--neurons",
        type=int_type("--neurons", 1, None),
        help="semantic: the first N neurons of every block (default: all)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:

    import clipviz
    from clipviz.analysis.studies import STUDIES, load_probe
    from clipviz.analysis.studies.common import require_matplotlib

    require_matplotlib()  # before any work: the one-line hint if matplotlib is missing
    if args.template.count("{}") != 1:
        raise clipviz.ClipvizError(f"bad --template {args.template!r}: it needs exactly one {{}}")
    names = STUDY_NAMES if args.study == "all" else (args.study,)
    for option, study in (("steps", "spatial"), ("neurons", "semantic"), ("mask_column", "background")):
        if getattr(args, option) is not None and study not in names:
            flag = "--" + option.replace("_", "-")
            raise clipviz.ClipvizError(f"{flag} is for --study {study} (or all); --study {args.study} reads none")
    args.steps = 64 if args.steps is None else args.steps
    check_output_dir(args.out)  # before the model and the studies, not after them
    model = load_model(args)
    probe = load_probe(
        args.dataset,
        model.image_size,
        args.samples,
        seed=args.seed,
        split=args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        caption_column=args.caption_column,
        mask_column=args.mask_column,
        templates=(args.template,),
        preprocess=model.preprocess_pil,  # the model's own resize and crop, as in example mining
    )
    if len(probe) < args.samples:
        print(f"analyze: {len(probe)} probe images ('{args.dataset}' has no more than that; {args.samples} asked)")
    progress = not args.no_progress
    for name in names:
        options = {"progress_bar": progress, "batch": args.batch_size}
        if name == "spatial":
            options.update(objective_steps=args.steps, objective_targets=2 if args.steps else 0, seed=args.seed)
        if name == "semantic":
            options.update(neurons=args.neurons, seed=args.seed)
        result = STUDIES[name](model, probe, **options)
        json_path, png_path = result.save(args.out)
        summary = ", ".join(f"{k}={_short(v)}" for k, v in result.summary().items() if not isinstance(v, dict))
        print(f"{name}: {summary}")
        print(f"wrote {json_path} and {png_path}")
    return 0


def _short(value):
    return f"{value:.3f}" if isinstance(value, float) else value
