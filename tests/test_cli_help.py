"""``clipviz --help`` stays fast: the help of the CLI and of every subcommand imports no heavy library
(scripts/bench_cli.py measures the wall time; docs/benchmarks.md has the figures)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "open_clip", "timm", "datasets", "gradio", "accelerate")


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["publish", "--help"], ["space", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = (
        "import contextlib, io, sys\nfrom clipviz.apps.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main(sys.argv[1:])\n"
        "    except SystemExit:\n        pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none')"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "none"
