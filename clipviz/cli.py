"""The ``clipviz`` console script, ``python -m clipviz.cli`` and ``accelerate launch -m clipviz.cli ...``: the
command line (``clipviz.apps.cli``). Ctrl-C at any moment, also while the libraries are still importing, prints
one line and exits with code 130."""

import contextlib
import os
import sys


def _interrupted() -> None:
    """Exit with 130 at once. CPython remembers a KeyboardInterrupt that passed through code a C extension ran while
    importing, and at exit kills itself with SIGINT (code -2) even though the interrupt was handled."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)


def main(argv=None) -> int:
    try:
        from clipviz.apps.cli import main as run
    except KeyboardInterrupt:
        print("clipviz: interrupted", file=sys.stderr)
        _interrupted()
    code = run(argv)
    if code == 130:
        _interrupted()
    return code


if __name__ == "__main__":
    sys.exit(main())
