"""``clipviz publish``: an atlas as a Hugging Face Space and results as a dataset."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    pub = sub.add_parser(
        "publish",
        help="publish an atlas as a Hugging Face Space and/or results as a dataset",
        description="Upload an atlas (or results, built into an atlas first) to a Hugging Face "
        "Space with the clipviz Gradio app and a wheel of this clipviz (the Space installs it from "
        "there: clipviz is not on PyPI), and/or the results as a dataset. The token comes from "
        "`hf auth login` or HF_TOKEN and is never printed.",
    )
    pub.add_argument("path", metavar="SITE_OR_RESULTS_DIR")
    pub.add_argument("--space", metavar="USER/NAME")
    pub.add_argument("--dataset", metavar="USER/NAME")
    pub.add_argument("--private", action="store_true")
    pub.add_argument("--dry-run", action="store_true", help="summarise what would be uploaded; upload nothing")
    pub.add_argument(
        "--stage",
        metavar="DIR",
        help="write exactly the folder that is (or, with --dry-run, would be) uploaded to DIR (a new or empty "
        "folder; with both --space and --dataset: DIR/space and DIR/dataset)",
    )
    pub.add_argument("--list", action="store_true", help="list every file instead of counts and sizes by kind")
    pub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipviz.apps.publish import publish

    publish(
        args.path,
        space=args.space,
        dataset=args.dataset,
        dry_run=args.dry_run,
        private=args.private,
        stage=args.stage,
        list_files=args.list,
    )
    return 0
