"""``clipviz demo``: the offline demo on the bundled world-clip."""

from __future__ import annotations

import argparse

from clipviz.apps.validate import int_type
from clipviz.errors import MAX_STEPS


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="offline demo on the bundled world-clip: every method checked on neurons with known concepts",
        description="Offline demo on the bundled world-clip model.",
    )
    demo.add_argument("--out", default="clipviz-demo")
    demo.add_argument(
        "--planted",
        type=int_type("--planted", 0, None),
        default=None,
        help="planted neurons (known answers) shown first; default: all of them",
    )
    demo.add_argument(
        "--per-block", type=int_type("--per-block", 0, 64), default=2, help="natural clear neurons per block after them"
    )
    demo.add_argument("--steps", type=int_type("--steps", 1, MAX_STEPS), default=150, help="visualization steps")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipviz.apps.demo import run_demo
    from clipviz.apps.validate import check_output_dir

    check_output_dir(args.out)
    page = run_demo(Path(args.out), per_block=args.per_block, steps=args.steps, planted=args.planted)
    print(f"open {page.resolve()}")
    return 0
