"""``clipviz visualize``: images that excite neurons, text prompts or classes."""

from __future__ import annotations

import argparse

from clipviz.apps.options import add_model_parser, load_model, parse_indices, parse_reduce
from clipviz.errors import ClipvizError


def add_parser(sub) -> None:
    vis = add_model_parser(sub, "visualize", "render images that excite neurons, text prompts or classes")
    vis.add_argument("--hook", help="hook name, e.g. blocks.6.mlp.hook_post")
    vis.add_argument("--neurons", help="neuron indices: 0:64, 1,5,9 or 0:4,10")
    vis.add_argument("--text", action="append", help="a prompt to render (CLIP-like models); repeatable")
    vis.add_argument("--class", dest="classes", help="class indices to render (classifiers), like --neurons")
    vis.add_argument(
        "--recipe",
        default="default",
        help="recipe name (default: default; vit-paper, "
        "vit-paper-clip, pii, clip-inversion, lucid, maco: see README; an unknown name lists them)",
    )
    vis.add_argument(
        "--reduce",
        type=parse_reduce,
        default="patches",
        help="patches (default), cls, all, max, patch:ROW:COL or region:R0:R1:C0:C1",
    )
    vis.add_argument("--steps", type=int, help="optimisation steps per stage (recipe's by default)")
    vis.add_argument("--size", type=int, help="image size in pixels (the model's by default)")
    vis.add_argument("--copies", type=int, help="augmented copies per image and step")
    vis.add_argument("--lr", type=float, help="learning rate")
    vis.add_argument("--seed", type=int, default=0)
    vis.add_argument("--samples", type=int, default=1, help="images per target, each with its own seed")
    vis.add_argument("--batch-size", type=int, default=16, help="targets optimised together")
    vis.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16", "bf16-weights", "fp16-weights"],
        help="bf16/fp16: autocast over fp32 weights; bf16-weights/fp16-weights: the model loaded in "
        "that dtype, no autocast (auto: bf16-weights on a GPU, fp32 on the CPU)",
    )
    vis.add_argument("--out", required=True, help="output folder (finished targets are skipped on a rerun)")
    vis.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipviz.visualization.visualize import visualize

    neurons = parse_indices(args.neurons) if args.neurons else []
    classes = parse_indices(args.classes) if args.classes else []
    if not (neurons or args.text or classes):
        raise ClipvizError("nothing to visualize: give --neurons (with --hook), --text or --class")
    if neurons and not args.hook:
        raise ClipvizError("--neurons needs --hook, e.g. --hook blocks.6.mlp.hook_post")
    model = load_model(args)
    results = visualize(
        model,
        args.hook,
        neurons,
        texts=args.text or (),
        classes=classes,
        recipe=args.recipe,
        seed=args.seed,
        samples=args.samples,
        reduce=args.reduce,
        batch_size=args.batch_size,
        precision=args.precision,
        out=args.out,
        steps=args.steps,
        size=args.size,
        copies=args.copies,
        lr=args.lr,
    )
    for v in results[:8]:
        print(f"{v.path}: objective {v.meta['objective_start']:.3f} -> {v.meta['objective_end']:.3f}")
    if len(results) > 8:
        print(f"... and {len(results) - 8} more")
    print(f"wrote {len(results)} visualizations to {args.out}")
    return 0
