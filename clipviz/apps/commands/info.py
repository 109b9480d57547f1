"""``clipviz info``: a model's summary and its hook names."""

from __future__ import annotations

import argparse
import json

from clipviz.apps.options import add_model_parser, load_model


def add_parser(sub) -> None:
    info = add_model_parser(sub, "info", "print a model's summary and its hook names")
    info.add_argument("--json", action="store_true", help="print the summary and every hook name as JSON")
    info.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
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
    from clipviz.model.hooks import BLOCK_POINTS

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
