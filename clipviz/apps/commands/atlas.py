"""``clipviz atlas``: a static, browsable site built from results."""

from __future__ import annotations

import argparse

from clipviz.apps.validate import int_type


def add_parser(sub) -> None:
    atlas = sub.add_parser(
        "atlas",
        help="build a static, browsable site from visualize/examples/concepts results",
        description="Build a static HTML atlas (open index.html, no server needed) from the "
        "outputs of visualize, examples and concepts found anywhere under RESULTS_DIR.",
    )
    atlas.add_argument("results", metavar="RESULTS_DIR")
    atlas.add_argument("--out", required=True, help="site folder (a new one, or an atlas to replace)")
    atlas.add_argument("--page-size", type=int_type("--page-size", 1), default=256, help="neurons per grid page")
    atlas.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipviz.apps.atlas import build_atlas

    site = build_atlas(args.results, args.out, page_size=args.page_size)
    print(f"open {(site / 'index.html').resolve()}")
    return 0
