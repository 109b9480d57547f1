"""``clipviz examples``: the dataset images that excite each neuron most."""

from __future__ import annotations

import argparse
import os

from clipviz.apps.options import add_model_parser, load_model
from clipviz.apps.validate import check_output_dir, expand, int_type, parse_spans
from clipviz.errors import MAX_WORKERS


def add_parser(sub) -> None:
    ex = add_model_parser(sub, "examples", "find the dataset images that excite each neuron most")
    ex.add_argument("--hook", required=True, help="hook name, e.g. blocks.6.mlp.hook_post")
    ex.add_argument("--dataset", required=True, help="folder of images, world:<n>, HF dataset id or saved dataset")
    ex.add_argument("--split", default="train")
    ex.add_argument("--streaming", action="store_true")
    ex.add_argument("--image-column")
    ex.add_argument("--caption-column")
    ex.add_argument("--neurons", help="neuron indices (all by default): 0:64, 1,5,9")
    ex.add_argument("--top-k", type=int_type("--top-k", 1), default=16, help="images kept per neuron")
    ex.add_argument("--reduce", default="patches", choices=["patches", "cls", "max"])
    ex.add_argument("--batch-size", type=int_type("--batch-size", 1), default=64)
    ex.add_argument("--shard-size", type=int_type("--shard-size", 1), default=1024, help="images per resumable shard")
    ex.add_argument(
        "--workers",
        type=int_type("--workers", 0, MAX_WORKERS),
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
    ex.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipviz.analysis.examples import check_mining, mine_examples, mine_examples_resumable, write_thumbnails
    from clipviz.data.sources import open_source

    spans = parse_spans(args.neurons, "neuron") if args.neurons is not None else None
    check_output_dir(args.out)
    source = open_source(
        args.dataset,
        split=args.split,
        image_column=args.image_column,
        caption_column=args.caption_column,
        streaming=args.streaming,
    )
    check_mining(source, args.top_k, args.batch_size, args.workers, args.shard_size, at_most_the_data=True)
    model = load_model(args)
    neurons = expand(spans, model.hook_width(args.hook), "neuron", f" for hook '{args.hook}'") if spans else None
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
        shown = [source.describe[i] if i < len(source.describe) else f"#{i}" for i in result.skipped[:10]]
        print(
            f"skipped {len(result.skipped)} unreadable images ({', '.join(shown)}"
            f"{' ...' if len(result.skipped) > 10 else ''}): not images, damaged, or of no agreed pixel range "
            "(32-bit, float)"
        )
    return 0
