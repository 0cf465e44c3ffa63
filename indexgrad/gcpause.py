"""The cyclic garbage collector held off while a program is compiled, derived or planned.

Compiling builds many small objects that live on (nodes, primitives, kernels), which makes
Python run full collections over the whole heap again and again; with large libraries loaded
that costs more than the compiling itself. Nothing made while paused is lost: the collector
runs as usual once the last paused section ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the collector for the block (nested and concurrent blocks count as one)."""
    global _depth, _was_enabled
    entered = False
    try:
        with _lock:
            if _depth == 0:
                _was_enabled = gc.isenabled()
                gc.disable()
            _depth += 1
            entered = True
        yield
    finally:
        with _lock:
            if entered:
                _depth -= 1
            if _depth == 0 and _was_enabled:
                _was_enabled = False
                gc.enable()
