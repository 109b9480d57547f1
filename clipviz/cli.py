"""The ``clipviz`` console script, ``python -m clipviz.cli`` and ``accelerate launch -m clipviz.cli ...``: the
command line (``clipviz.apps.cli``). Ctrl-C while the libraries are still importing prints one line too."""

import sys


def main(argv=None) -> int:
    try:
        from clipviz.apps.cli import main as run
    except KeyboardInterrupt:
        print("clipviz: interrupted", file=sys.stderr)
        return 130
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
