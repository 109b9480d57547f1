"""``clipviz visualize``: images that excite neurons, text prompts or classes."""

from __future__ import annotations

import argparse

from clipviz.apps.options import add_model_parser, load_model, parse_reduce
from clipviz.apps.validate import check_output_dir, expand, float_type, int_type, parse_spans, text_type
from clipviz.errors import MAX_SAMPLES, MAX_SEED, MAX_STEPS, ClipvizError


def add_parser(sub) -> None:
    vis = add_model_parser(sub, "visualize", "render images that excite neurons, text prompts or classes")
    vis.add_argument("--hook", help="hook name, e.g. blocks.6.mlp.hook_post")
    vis.add_argument("--neurons", help="neuron indices: 0:64, 1,5,9 or 0:4,10")
    vis.add_argument(
        "--text", action="append", type=text_type, help="a prompt to render (CLIP-like models); repeatable"
    )
    vis.add_argument("--class", dest="classes", help="class indices to render (classifiers), like --neurons")
    vis.add_argument(
        "--recipe",
        help="recipe name: default, vital, accentuate, vit-paper, vit-paper-clip, pii, clip-inversion, lucid, maco "
        "(see README; an unknown name lists them). If none is named: vital (data-guided) where reference images "
        "exist (--guide, or world-clip's own world), else default",
    )
    vis.add_argument(
        "--guide",
        help="reference images of data-guided recipes (vital): a folder of images, world:<n>, a dataset or a "
        "`clipviz examples` results folder; each neuron is guided by its own top examples in it (world-clip: its "
        "world by default)",
    )
    vis.add_argument(
        "--from-image",
        help="start from this image (feature accentuation: --recipe accentuate also keeps the result close to it)",
    )
    vis.add_argument(
        "--reduce",
        type=parse_reduce,
        help="patches (default), cls, all, max, patch:ROW:COL or region:R0:R1:C0:C1 (with --neurons)",
    )
    vis.add_argument(
        "--steps", type=int_type("--steps", 1, MAX_STEPS), help="optimisation steps per stage (recipe's by default)"
    )
    vis.add_argument(
        "--size",
        type=int_type("--size", 1),
        help="image size in pixels (the model's by default; from its patch size to 4x its input size)",
    )
    vis.add_argument("--copies", type=int_type("--copies", 1, 256), help="augmented copies per image and step")
    vis.add_argument("--lr", type=float_type("--lr"), help="learning rate (a finite number > 0)")
    vis.add_argument("--seed", type=int_type("--seed", 0, MAX_SEED), default=0)
    vis.add_argument(
        "--samples",
        type=int_type("--samples", 1, MAX_SAMPLES),
        default=1,
        help="images per target, each with its own seed",
    )
    vis.add_argument("--batch-size", type=int_type("--batch-size", 1), default=16, help="targets optimised together")
    vis.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="leave out targets whose loss stops being finite, go on, and list them at the end",
    )
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
    from clipviz.visualization.optimise import check_size
    from clipviz.visualization.visualize import visualize

    neuron_spans = parse_spans(args.neurons, "neuron") if args.neurons is not None else []
    class_spans = parse_spans(args.classes, "class") if args.classes is not None else []
    if not (neuron_spans or args.text or class_spans):
        raise ClipvizError("nothing to visualize: give --neurons (with --hook), --text or --class")
    if args.hook is not None and not args.hook.strip():
        raise ClipvizError("empty --hook: give a hook name such as blocks.6.mlp.hook_post (`clipviz info MODEL`)")
    if neuron_spans and not args.hook:
        raise ClipvizError("--neurons needs --hook, e.g. --hook blocks.6.mlp.hook_post")
    if not neuron_spans and (args.hook is not None or args.reduce is not None):
        given = "--hook" if args.hook is not None else "--reduce"
        raise ClipvizError(f"{given} is for --neurons; --text and --class render the model's output")
    args.reduce = args.reduce or "patches"
    check_output_dir(args.out)
    model = load_model(args)
    where = f" for hook '{args.hook}'" if args.hook else ""
    neurons = expand(neuron_spans, model.hook_width(args.hook), "neuron", where) if neuron_spans else []
    classes = expand(class_spans, None, "class") if class_spans else []
    check_size(model, args.size)
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
        skip_nonfinite=args.skip_nonfinite,
        steps=args.steps,
        size=args.size,
        copies=args.copies,
        lr=args.lr,
        guide=args.guide,
        from_image=args.from_image,
    )
    for v in results[:8]:
        print(f"{v.path}: objective {v.meta['objective_start']:.3f} -> {v.meta['objective_end']:.3f}")
    if len(results) > 8:
        print(f"... and {len(results) - 8} more")
    reused = f" ({results.reused} finished by an earlier run with the same settings, reused)" if results.reused else ""
    print(f"wrote {len(results)} visualizations to {args.out}{reused}")
    skipped = getattr(results, "skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} target(s) whose loss was not finite: " + "; ".join(w for _, w in skipped))
    return 0
