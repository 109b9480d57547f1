"""The ``clipviz`` console script, ``python -m clipviz.cli`` and ``accelerate launch -m clipviz.cli ...``: the
command line (``clipviz.apps.cli``). Ctrl-C at any moment, also while the libraries are still importing, prints
one line and exits with code 130; SIGTERM (``kill``, a job scheduler's time limit) prints one line and exits with 143.
Either way the files being written are removed, never left half-written."""

import contextlib
import os
import signal
import sys
import threading

from clipviz.errors import STOPPING, Terminated

_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def _exit_now(code: int) -> None:
    """Exit with ``code`` at once. CPython remembers a KeyboardInterrupt that passed through code a C extension ran
    while importing, and at exit kills itself with SIGINT (code -2) even though the interrupt was handled."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _quiet(unraisable) -> None:
    """An unraisable exception while stopping (a finaliser of what the stop interrupted) is not shown."""


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _handler(installer: int):
    """The handler for Ctrl-C and SIGTERM. Inside an import (torch's runs Python code from C++, where an exception
    would abort the process with "terminate called after throwing an instance of 'python_error'"): one line and the
    exit code at once, as nothing is written while a library imports. SIGTERM in a process forked from this one (a
    decoding worker): the default action, which the parent reports. Anywhere else: KeyboardInterrupt or ``Terminated``,
    so that writers remove their temporary files on the way out."""

    def on_signal(signum, frame) -> None:
        if signum == signal.SIGTERM and os.getpid() != installer:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _importing(frame):
            print(f"clipviz: {_WORDS[signum]}", file=sys.stderr)
            _exit_now(_CODES[signum])
        STOPPING.append(_CODES[signum])
        sys.unraisablehook = _quiet  # torch's loaders complain from __del__ about workers the signal also stopped
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    return on_signal


@contextlib.contextmanager
def _signals_handled():
    """Install the handler for SIGINT and SIGTERM where the caller left Python's default (not in a thread, not where
    a caller such as a test runner or a scheduler chose its own), and put the previous handlers back after."""
    if threading.current_thread() is not threading.main_thread():  # only there can a handler be set
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    ours = {s: signal.getsignal(s) for s, default in defaults.items() if signal.getsignal(s) is default}
    handler = _handler(os.getpid())
    for s in ours:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, previous in ours.items():
            signal.signal(s, previous)


def main(argv=None) -> int:
    STOPPING.clear()
    with _signals_handled():
        try:
            from clipviz.apps.cli import main as run
        except (KeyboardInterrupt, Terminated) as stop:
            signum = signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM
            print(f"clipviz: {_WORDS[signum]}", file=sys.stderr)
            _exit_now(_CODES[signum])
        code = run(argv)
    if code in (130, 143):
        _exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
