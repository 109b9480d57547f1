"""The ``clipviz`` command line.

User errors (unknown model, bad hook, bad file) print one line, ``clipviz: error: ...``, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from .errors import ClipvizError


def _load(args: argparse.Namespace):
    import torch

    from .loading import load

    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = getattr(args, "precision", None)
    if precision == "auto" and torch.device(device).type == "cuda":
        precision = "bf16-weights"  # the fastest GPU path (docs/benchmarks.md)
    dtype = {"bf16-weights": torch.bfloat16, "fp16-weights": torch.float16}.get(precision)
    return load(args.model, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code)


def cmd_info(args: argparse.Namespace) -> int:
    model = _load(args)
    summary = model.summary()
    if args.json:
        summary["hooks"] = model.hook_names()
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, dict):  # hooks / blocks left out: one line each, with the reason
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        elif value is not None:
            print(f"{key:<{width}}  {value}")
    last = model.n_blocks - 1
    print(
        f"\nhook points (blocks 0..{last}; e.g. blocks.{last}.mlp.hook_post), with the native modules of the first "
        "block that has them:"
    )
    from .hooks import BLOCK_POINTS

    for point_name in BLOCK_POINTS:
        have = [i for i in range(model.n_blocks) if f"blocks.{i}.{point_name}" in model.hook_names(i)]
        if not have:
            continue
        point = model.hook_point(f"blocks.{have[0]}.{point_name}")
        where = "input of" if point.on_input else "output of"
        only = "" if len(have) == model.n_blocks else f"  (blocks {','.join(map(str, have))} only)"
        print(f"  blocks.<i>.{point_name:<20} {where} {point.native}{only}")
    if model.backend.hierarchical:
        stages = {}
        for block in model.blocks:
            stages.setdefault(block.stage, []).append(block.index)
        spans = ", ".join(f"stage {s}: blocks {v[0]}..{v[-1]}" for s, v in stages.items())
        print(f"  stages.<s>.blocks.<j>.<point> is accepted too ({spans})")
    return 0


def parse_indices(text: str) -> list[int]:
    """``"0:64"``, ``"3,7,9"`` or ``"0:4,10"`` -> a list of indices (ranges are half-open, like Python's)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if ":" in part:
                lo, hi = part.split(":", 1)
                out += list(range(int(lo), int(hi)))
            else:
                out.append(int(part))
        except ValueError:
            raise ClipvizError(f"bad index list '{text}': use ranges and lists such as 0:64 or 1,5,9") from None
    if any(i < 0 for i in out):
        raise ClipvizError(f"bad index list '{text}': indices must be >= 0")
    return out


def cmd_visualize(args: argparse.Namespace) -> int:
    from .visualize import visualize

    neurons = parse_indices(args.neurons) if args.neurons else []
    classes = parse_indices(args.classes) if args.classes else []
    if not (neurons or args.text or classes):
        raise ClipvizError("nothing to visualize: give --neurons (with --hook), --text or --class")
    if neurons and not args.hook:
        raise ClipvizError("--neurons needs --hook, e.g. --hook blocks.6.mlp.hook_post")
    model = _load(args)
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


def cmd_examples(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .examples import mine_examples, mine_examples_resumable, open_source, write_thumbnails

    neurons = parse_indices(args.neurons) if args.neurons else None
    source = open_source(
        args.dataset,
        split=args.split,
        image_column=args.image_column,
        caption_column=args.caption_column,
        streaming=args.streaming,
    )
    model = _load(args)
    out = Path(args.out)
    if source.length:  # sharded: a rerun resumes, and `accelerate launch` splits the shards across processes
        result = mine_examples_resumable(
            model,
            args.hook,
            source,
            out,
            neurons=neurons,
            top_k=args.top_k,
            reduce=args.reduce,
            batch=args.batch_size,
            shard_size=args.shard_size,
            keep_activations=args.save_activations,
            workers=args.workers,
        )
    else:
        result = mine_examples(
            model,
            args.hook,
            source,
            neurons=neurons,
            top_k=args.top_k,
            reduce=args.reduce,
            batch=args.batch_size,
            keep_activations=args.save_activations,
        )
        result.save(out)
    write_thumbnails(source, result, out, model=model)
    print(f"{result.seen} images, {len(result.neurons)} neurons, top {result.scores.shape[1]} each -> {out}")
    if result.skipped:
        print(
            f"skipped {len(result.skipped)} unreadable images (indices {result.skipped[:10]}"
            f"{' ...' if len(result.skipped) > 10 else ''})"
        )
    return 0


def _width(model, hook: str) -> int:
    """Number of neurons (last dimension) at a hook."""
    import torch

    _, cache = model.run_with_cache(torch.zeros(1, 3, *model.image_size), [hook])
    return int(cache[hook].shape[-1])


def cmd_concepts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .concepts import direct_lens, load_vocabulary, parse_templates, text_embeddings, visual_words, write_table

    if args.method == "dissect" and not (args.probe or args.activations):
        raise ClipvizError(
            "--method dissect needs --probe DATASET (a folder, world:<n> or a Hugging Face dataset) "
            "or --activations EXAMPLES_DIR (from clipviz examples --save-activations)"
        )
    if args.activations and args.method != "dissect":
        raise ClipvizError("--activations is for --method dissect")
    stored = None
    if args.activations:
        from .dissect import stored_activations

        stored = stored_activations(
            Path(args.activations), args.hook, parse_indices(args.neurons) if args.neurons else None
        )
        if args.probe and args.probe != stored[2]:
            raise ClipvizError(
                f"--probe {args.probe} differs from the probe set of the stored activations "
                f"({stored[2]}); leave --probe out to use theirs"
            )
    vocab = load_vocabulary(args.vocab, parse_templates(args.templates))
    model = _load(args)
    labeller = model if not args.labeller else _load(argparse.Namespace(**{**vars(args), "model": args.labeller}))
    if stored is not None:
        neurons = stored[3]
    else:
        neurons = parse_indices(args.neurons) if args.neurons else list(range(_width(model, args.hook)))
    if args.method == "direct":
        table = direct_lens(model, args.hook, neurons, vocab, top_k=args.top_k)
    elif args.method == "dissect":
        from .dissect import image_text_similarities, probe_activations, softwpmi
        from .examples import open_source

        source = open_source(stored[2] if stored is not None else args.probe)
        text = text_embeddings(labeller, vocab)
        acts, kept = stored[:2] if stored is not None else probe_activations(model, args.hook, source, neurons)
        scores = softwpmi(acts, image_text_similarities(labeller, source, kept, text))
        values, index = scores.topk(min(args.top_k, len(vocab.concepts)), dim=1)
        table = [
            {
                "neuron": n,
                "words": [vocab.concepts[int(i)] for i in index[r]],
                "scores": [round(float(v), 5) for v in values[r]],
            }
            for r, n in enumerate(neurons)
        ]
    elif args.method == "visual":
        import numpy as np
        import torch

        from .visualize import visualize

        vis = visualize(model, args.hook, neurons, recipe=args.recipe, steps=args.steps, samples=args.samples)
        images = torch.stack([torch.from_numpy(np.array(v.image)).permute(2, 0, 1).float() / 255 for v in vis])
        images = images.reshape(args.samples, len(neurons), *images.shape[1:]).transpose(0, 1)
        table = [
            {"neuron": n, **row}
            for n, row in zip(neurons, visual_words(labeller, images, vocab, args.top_k), strict=True)
        ]
    else:
        raise ClipvizError(f"unknown method '{args.method}'; accepted: direct, dissect, visual")
    paths = write_table(Path(args.out), args.hook, table, method=args.method, vocabulary=vocab)
    for row in table[:10]:
        words = ", ".join(f"{w} ({s:.2f})" for w, s in zip(row["words"], row["scores"], strict=True))
        print(f"neuron {row['neuron']:>5}: {words}")
    if len(table) > 10:
        print(f"... {len(table) - 10} more")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import run_demo

    page = run_demo(Path(args.out), per_block=args.per_block, steps=args.steps)
    print(f"open {page.resolve()}")
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    from .atlas import build_atlas

    site = build_atlas(args.results, args.out, page_size=args.page_size)
    print(f"open {(site / 'index.html').resolve()}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish

    publish(args.path, space=args.space, dataset=args.dataset, dry_run=args.dry_run, private=args.private)
    return 0


def _reduction(text: str):
    if text in ("patches", "cls", "all", "max"):
        return text
    parts = text.split(":")
    try:
        if parts[0] == "patch" and len(parts) == 3:
            return ("patch", int(parts[1]), int(parts[2]))
        if parts[0] == "region" and len(parts) == 5:
            return ("region", *map(int, parts[1:]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("use patches, cls, all, max, patch:ROW:COL or region:R0:R1:C0:C1")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="clipviz", description="See what the neurons of vision transformers respond to."
    )
    parser.add_argument("--version", action="version", version=f"clipviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "model",
            help="model spec: world-clip, hf:<id or dir>, open_clip:<name>[/<tag>], "
            "open_clip:hf-hub:<id>, timm:<name>, or a local directory",
        )
        p.add_argument(
            "--trust-remote-code", action="store_true", help="allow a hub model to run its own code (off unless asked)"
        )
        p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
        return p

    info = model_parser("info", "print a model's summary and its hook names")
    info.add_argument("--json", action="store_true", help="print the summary and every hook name as JSON")
    info.set_defaults(func=cmd_info)

    from .recipes import RECIPES

    vis = model_parser("visualize", "render images that excite neurons, text prompts or classes")
    vis.add_argument("--hook", help="hook name, e.g. blocks.6.mlp.hook_post")
    vis.add_argument("--neurons", help="neuron indices: 0:64, 1,5,9 or 0:4,10")
    vis.add_argument("--text", action="append", help="a prompt to render (CLIP-like models); repeatable")
    vis.add_argument("--class", dest="classes", help="class indices to render (classifiers), like --neurons")
    vis.add_argument("--recipe", default="vit-paper", choices=sorted(RECIPES))
    vis.add_argument(
        "--reduce",
        type=_reduction,
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
    vis.set_defaults(func=cmd_visualize)

    ex = model_parser("examples", "find the dataset images that excite each neuron most")
    ex.add_argument("--hook", required=True, help="hook name, e.g. blocks.6.mlp.hook_post")
    ex.add_argument("--dataset", required=True, help="folder of images, world:<n>, HF dataset id or saved dataset")
    ex.add_argument("--split", default="train")
    ex.add_argument("--streaming", action="store_true")
    ex.add_argument("--image-column")
    ex.add_argument("--caption-column")
    ex.add_argument("--neurons", help="neuron indices (all by default): 0:64, 1,5,9")
    ex.add_argument("--top-k", type=int, default=16)
    ex.add_argument("--reduce", default="patches", choices=["patches", "cls", "max"])
    ex.add_argument("--batch-size", type=int, default=64)
    ex.add_argument("--shard-size", type=int, default=1024, help="images per resumable shard")
    ex.add_argument(
        "--workers",
        type=int,
        default=min(8, max(1, (os.cpu_count() or 2) - 1)),
        help="processes that decode and resize images (0: in the main process; default: one per core "
        "but one, at most 8, which doubled the rate of an H100 over decoding in-process)",
    )
    ex.add_argument(
        "--save-activations",
        action="store_true",
        help="also store every image's reduced activation (float16), e.g. as a probe matrix",
    )
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=cmd_examples)

    con = model_parser("concepts", "name neurons of CLIP-like models with words")
    con.add_argument("--hook", required=True, help="an MLP hook, e.g. blocks.10.mlp.hook_post")
    con.add_argument("--neurons", help="neuron indices (all by default)")
    con.add_argument(
        "--method",
        default="direct",
        choices=["direct", "dissect", "visual"],
        help="direct: weights only; dissect: SoftWPMI on --probe images; visual: embed visualizations",
    )
    con.add_argument("--probe", help="probe images for dissect: a folder, world:<n> or an HF dataset")
    con.add_argument(
        "--activations",
        metavar="EXAMPLES_DIR",
        help="for dissect: reuse the probe matrix stored by clipviz examples --save-activations",
    )
    con.add_argument("--labeller", help="CLIP model that labels images (default: the model itself)")
    con.add_argument("--recipe", default="default", help="recipe for --method visual")
    con.add_argument("--steps", type=int, default=128, help="visualization steps for --method visual")
    con.add_argument("--samples", type=int, default=2, help="visualizations per neuron for --method visual")
    con.add_argument("--vocab", default="world", help="world, imagenet, cifar10, cifar100, words-<N> or a file")
    con.add_argument("--templates", help="'ensemble' or '|'-separated prompt templates with one {} each")
    con.add_argument("--top-k", type=int, default=5)
    con.add_argument("--out", required=True)
    con.set_defaults(func=cmd_concepts)

    atlas = sub.add_parser(
        "atlas",
        help="build a static, browsable site from visualize/examples/concepts results",
        description="Build a static HTML atlas (open index.html, no server needed) from the "
        "outputs of visualize, examples and concepts found anywhere under RESULTS_DIR.",
    )
    atlas.add_argument("results", metavar="RESULTS_DIR")
    atlas.add_argument("--out", required=True, help="site folder (a new one, or an atlas to replace)")
    atlas.add_argument("--page-size", type=int, default=256, help="neurons per grid page")
    atlas.set_defaults(func=cmd_atlas)

    pub = sub.add_parser(
        "publish",
        help="publish an atlas as a Hugging Face Space and/or results as a dataset",
        description="Upload an atlas (or results, built into an atlas first) to a Hugging Face "
        "Space with the clipviz Gradio app, and/or the results as a dataset. The token comes from "
        "`hf auth login` or HF_TOKEN and is never printed.",
    )
    pub.add_argument("path", metavar="SITE_OR_RESULTS_DIR")
    pub.add_argument("--space", metavar="USER/NAME")
    pub.add_argument("--dataset", metavar="USER/NAME")
    pub.add_argument("--private", action="store_true")
    pub.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    pub.set_defaults(func=cmd_publish)

    demo = sub.add_parser(
        "demo",
        help="offline demo on the bundled world-clip: visualizations, examples, words",
        description="Offline demo on the bundled world-clip model.",
    )
    demo.add_argument("--out", default="clipviz-demo")
    demo.add_argument("--per-block", type=int, default=2, help="neurons per block")
    demo.add_argument("--steps", type=int, default=150, help="visualization steps")
    demo.set_defaults(func=cmd_demo)
    return parser


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and log chatter out of the CLI's output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.environ.get("CLIPVIZ_DEBUG"):
        _quiet_libraries()
    try:
        return args.func(args)
    except ClipvizError as error:
        print(f"clipviz: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
