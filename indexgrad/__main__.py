"""The `indexgrad` command's entry point (and `python -m indexgrad`): quiet under Ctrl-C and closed pipes.

This module imports nothing heavy, so that `entry` holds Ctrl-C from the moment the command's own
code starts, while numpy and the rest load (only the interpreter's own start-up comes before it).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, TextIO

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C ended


class PipeGuard:
    """A text stream that, once its reader has gone (`indexgrad run ... | head -1`), drops what is
    written instead of raising BrokenPipeError, so that the command still finishes its work (its
    --out, --save and --plot files) and exits quietly."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.gone = True
        try:  # what the stream still buffers, and the interpreter's last flush, go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class CtrlC:
    """The SIGINT handler: raises KeyboardInterrupt as Python's own does, and remembers that Ctrl-C
    came, because an import it interrupts may end in another exception (numpy's C core then
    raises ImportError); cli.main reads `interrupted` through signal.getsignal."""

    interrupted = False

    def __call__(self, signum: int, frame: object) -> None:
        self.interrupted = True
        raise KeyboardInterrupt


def _exit_now(signum: int, frame: object) -> None:
    os._exit(INTERRUPTED)


def _leave_interrupted() -> None:
    """Say so on stderr and end at once with status 130."""
    print("indexgrad: interrupted", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(INTERRUPTED)


def _unraisable(info: Any) -> None:
    """A KeyboardInterrupt raised where Python cannot raise it (a callback of the import system's
    module locks, while modules load) would be printed as "Exception ignored" with a traceback and
    then lost, the command going on: it ends the command instead, as any other Ctrl-C does."""
    if isinstance(info.exc_value, KeyboardInterrupt):
        signal.signal(signal.SIGINT, _exit_now)
        _leave_interrupted()
    sys.__unraisablehook__(info)


def entry() -> None:
    """Run the command; Ctrl-C at any moment (while modules load, while it works, while it prints
    or exits) ends it with status 130 and one line on stderr, never a traceback."""
    ctrl_c = CtrlC()
    try:
        signal.signal(signal.SIGINT, ctrl_c)
        sys.unraisablehook = _unraisable
        sys.stdout = PipeGuard(sys.stdout)  # type: ignore[assignment]
        sys.stderr = PipeGuard(sys.stderr)  # type: ignore[assignment]
        from .cli import main

        code = main()
        signal.signal(signal.SIGINT, _exit_now)  # the work is done: a late Ctrl-C just ends it
    except BaseException as e:
        if not (ctrl_c.interrupted or isinstance(e, KeyboardInterrupt)):
            raise
        signal.signal(signal.SIGINT, _exit_now)
        # Under `python -m`, an interrupt that landed in an import was seen to make the interpreter
        # end itself by SIGINT at exit (status -2) although it was handled here: leave at once.
        _leave_interrupted()
    if code == INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(INTERRUPTED)
    # While it shuts down, Python gives a handler of its own back to the system's default, so a
    # Ctrl-C then would end the finished command by SIGINT (status -2); an ignored one stays ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
