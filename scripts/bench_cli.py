"""How fast the command line answers: wall time of ``python -m clipviz.cli --help`` (and of a subcommand's help),
each run in a fresh interpreter, plus which heavy libraries the help imports (none should be).

    python scripts/bench_cli.py [--runs 7]

Prints one line per command (median and best of the runs) and exits non-zero when a median is over 1 s or a help
imports torch, transformers, open_clip, timm, datasets, gradio or accelerate (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "transformers", "open_clip", "timm", "datasets", "gradio", "accelerate", "PIL", "numpy")
COMMANDS = (["--help"], ["sweep", "--help"], ["visualize", "--help"], ["publish", "--help"])


def wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipviz.cli", *argv], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def heavy_imports(argv: list[str]) -> list[str]:
    code = (
        "import contextlib, io, sys\nfrom clipviz.apps.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main(sys.argv[1:])\n"
        "    except SystemExit:\n        pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    return [m for m in (lines[-1] if lines else "").split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    wall(["--help"])  # warm the file cache
    failed = False
    for argv in COMMANDS:
        times = [wall(argv) for _ in range(args.runs)]
        loaded = heavy_imports(argv)
        median = statistics.median(times)
        failed |= median >= 1.0 or bool(loaded)
        print(
            f"clipviz {' '.join(argv):<18} median {median:.3f} s, best {min(times):.3f} s over {args.runs} runs; "
            f"heavy imports: {', '.join(loaded) or 'none'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
