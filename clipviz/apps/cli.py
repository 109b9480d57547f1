"""The ``clipviz`` command line.

User errors (unknown model, bad hook, bad file) print one line, ``clipviz: error: ...``, and exit with code 2.
Each subcommand lives in ``clipviz.apps.commands.<name>``; nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from clipviz.apps.commands import NAMES
from clipviz.errors import STOPPING, ClipvizError, Terminated


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``clipviz: error: ...`` and exit code 2, no usage block."""

    def error(self, message: str):
        self.exit(2, f"clipviz: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    from clipviz import __version__

    parser = Parser(prog="clipviz", description="See what the neurons of vision transformers respond to.")
    parser.add_argument("--version", action="version", version=f"clipviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in NAMES:
        import_module(f"clipviz.apps.commands.{name}").add_parser(sub)
    return parser


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and log chatter out of the CLI's output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "huggingface_hub", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _close_progress_bars() -> None:
    """Close open tqdm bars so that an error starts on a line of its own, not glued to a bar."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # a broken bar must not hide the error
            bar.close()
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def _warning_line(w: warnings.WarningMessage) -> str:
    """clipviz's own warnings on one line (they speak to the user); a library's as Python shows them."""
    if Path(w.filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        return f"clipviz: warning: {' '.join(str(w.message).split())}\n"
    return warnings.formatwarning(w.message, w.category, w.filename, w.lineno)


def _fail(message: str, code: int = 2) -> int:
    _close_progress_bars()
    print(f"clipviz: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _os_error(error: OSError) -> str:
    """``cannot write 'path': No space left on device``: the path and the cause, on one line."""
    cause = error.strerror or str(error) or type(error).__name__
    path = error.filename
    if path is None:
        return f"error: {cause}"
    if str(path).endswith(".tmp") and Path(path).name.startswith("."):  # an atomic writer's temporary file
        path = Path(path).parent
    return f"error: '{path}': {cause}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 2 for a user error (one line on stderr), 130 for Ctrl-C and 143 for SIGTERM at any moment."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Terminated:
        return _fail("terminated", 143)
    except BaseException:
        if not STOPPING:
            raise
        # the stop signal reached other parts too (a data loader's killed workers): their errors are that stop
        return _fail("terminated" if STOPPING[0] == 143 else "interrupted", STOPPING[0])


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, usage errors (already printed on one line)
        return done.code if isinstance(done.code, int) else 2
    if not os.environ.get("CLIPVIZ_DEBUG"):
        _quiet_libraries()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # once per place, whatever filters the caller set
            if not os.environ.get("CLIPVIZ_DEBUG"):
                warnings.simplefilter("ignore", FutureWarning)
            code = args.func(args)
    except (ClipvizError, MemoryError, OSError) as error:
        if STOPPING:  # raised by the stop signal's unwinding: reported as the stop, by main
            raise
        if isinstance(error, ClipvizError):  # a user error: the library's warnings would only be noise around it
            return _fail(f"error: {error}")
        if isinstance(error, MemoryError):
            return _fail("error: out of memory: use fewer neurons, a smaller --batch-size or a smaller --size")
        return _fail(_os_error(error))
    for w in caught:  # warnings of a run that worked are shown, once, after it
        sys.stderr.write(_warning_line(w))
    return code
