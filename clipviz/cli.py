"""The ``clipviz`` console script, ``python -m clipviz.cli`` and ``accelerate launch -m clipviz.cli ...``: the
command line (``clipviz.apps.cli``). Ctrl-C at any moment, also while the libraries are still importing, prints
one line and exits with code 130."""

import contextlib
import os
import signal
import sys
import threading


def _interrupted() -> None:
    """Exit with 130 at once. CPython remembers a KeyboardInterrupt that passed through code a C extension ran while
    importing, and at exit kills itself with SIGINT (code -2) even though the interrupt was handled."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)


def _on_ctrl_c(signum, frame) -> None:
    """Ctrl-C inside an import (torch's runs Python code from C++, where an exception would abort the process with
    "terminate called after throwing an instance of 'python_error'"): one line and 130 at once, as nothing is written
    while a library imports. Anywhere else: a KeyboardInterrupt, so that writers clean up their temporary files."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            print("clipviz: interrupted", file=sys.stderr)
            _interrupted()
        frame = frame.f_back
    raise KeyboardInterrupt


def main(argv=None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    if previous is signal.default_int_handler:  # not where the caller chose otherwise
        signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        try:
            from clipviz.apps.cli import main as run
        except KeyboardInterrupt:
            print("clipviz: interrupted", file=sys.stderr)
            _interrupted()
        code = run(argv)
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
    if code == 130:
        _interrupted()
    return code


if __name__ == "__main__":
    sys.exit(main())
