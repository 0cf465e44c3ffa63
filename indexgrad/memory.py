"""The memory limit: the largest array one statement may create, and byte counts for people."""

from __future__ import annotations

import os

from .errors import IndexgradError

_LIMIT: list[int | None] = [None]


def set_memory_limit(nbytes: int | None) -> None:
    """Largest array or intermediate (in bytes) a statement may create; None restores the default."""
    _LIMIT[0] = nbytes


def memory_limit() -> int:
    """The limit in force: set_memory_limit(), else INDEXGRAD_MEMORY_LIMIT, else 80% of free memory."""
    if _LIMIT[0] is not None:
        return _LIMIT[0]
    env = os.environ.get("INDEXGRAD_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise IndexgradError(f"INDEXGRAD_MEMORY_LIMIT must be a number of bytes, got '{env}'") from None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * 0.8)
    except OSError:
        pass
    return 8 << 30


def human_bytes(n: int) -> str:
    """A byte count for people: '3.5 GiB'; any size, however large, without overflowing a float."""
    for k, unit in enumerate(("bytes", "KiB", "MiB", "GiB", "TiB")):
        if n < 1024 ** (k + 1) or unit == "TiB":
            if unit == "bytes":
                return f"{n} bytes"
            whole, rest = divmod((n * 10 + 1024**k // 2) // 1024**k, 10)  # rounded, in integers
            return f"{whole}.{rest} {unit}"
    return str(n)
