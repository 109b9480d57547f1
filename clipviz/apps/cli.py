"""The ``clipviz`` command line.

User errors (unknown model, bad hook, bad file) print one line, ``clipviz: error: ...``, and exit with code 2.
Each subcommand lives in ``clipviz.apps.commands.<name>``; nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from importlib import import_module

from clipviz.apps.commands import NAMES
from clipviz.errors import ClipvizError


def build_parser() -> argparse.ArgumentParser:
    from clipviz import __version__

    parser = argparse.ArgumentParser(
        prog="clipviz", description="See what the neurons of vision transformers respond to."
    )
    parser.add_argument("--version", action="version", version=f"clipviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in NAMES:
        import_module(f"clipviz.apps.commands.{name}").add_parser(sub)
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
