"""``python -m clipviz.cli`` and ``accelerate launch -m clipviz.cli ...``: the command line (``clipviz.apps.cli``)."""

import sys

from clipviz.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
