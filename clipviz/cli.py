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
    from .loading import load

    return load(args.model, device=getattr(args, "device", None), trust_remote_code=args.trust_remote_code)


def cmd_info(args: argparse.Namespace) -> int:
    model = _load(args)
    summary = model.summary()
    if args.json:
        summary["hooks"] = model.hook_names()
        print(json.dumps(summary, indent=2))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if value is not None:
            print(f"{key:<{width}}  {value}")
    last = model.n_blocks - 1
    print(f"\nhook points (blocks 0..{last}; e.g. blocks.{last}.mlp.hook_post), with block 0's native modules:")
    for name in model.hook_names(0):
        point = model.hook_point(name)
        where = "input of" if point.on_input else "output of"
        print(f"  blocks.<i>.{name.split('.', 2)[2]:<20} {where} {point.native}")
    if model.backend.hierarchical:
        stages = {}
        for block in model.blocks:
            stages.setdefault(block.stage, []).append(block.index)
        spans = ", ".join(f"stage {s}: blocks {v[0]}..{v[-1]}" for s, v in stages.items())
        print(f"  stages.<s>.blocks.<j>.<point> is accepted too ({spans})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="clipviz", description="See what the neurons of vision transformers "
                                     "respond to.")
    parser.add_argument("--version", action="version", version=f"clipviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("model", help="model spec: world-clip, hf:<id or dir>, open_clip:<name>[/<tag>], "
                       "open_clip:hf-hub:<id>, timm:<name>, or a local directory")
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow a hub model to run its own code (off unless asked)")
        return p

    info = model_parser("info", "print a model's summary and its hook names")
    info.add_argument("--json", action="store_true", help="print the summary and every hook name as JSON")
    info.set_defaults(func=cmd_info)
    return parser


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and log chatter out of the CLI's output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
