"""The memory limit: the most bytes of arrays a program may hold, byte counts for people, and how
much freed memory glibc keeps for the next call."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

from .errors import IndexgradError

NO_LIMIT = 2**63 - 1  # what "inf" means: every size fits under it
_LIMIT: list[int | None] = [None]


def set_memory_limit(nbytes: int | float | None) -> None:
    """The most bytes of arrays a program may hold at once (math.inf: no limit); None restores
    the default (see memory_limit)."""
    _LIMIT[0] = None if nbytes is None else _as_limit(nbytes, "set_memory_limit() takes")


def memory_limit() -> int:
    """The limit in force: set_memory_limit(), else INDEXGRAD_MEMORY_LIMIT (a number of bytes such
    as 2e9, or inf for none), else 80% of the memory this process can still take: the least of
    the machine's available memory (/proc/meminfo) and the room left in its cgroup (v2 memory.max
    less memory.current, or v1 memory.limit_in_bytes less memory.usage_in_bytes, for its own
    group and every group above it), as a container's limit is what ends it, and the room left
    under an address-space limit (ulimit -v); 8 GiB when none of these can be read."""
    if _LIMIT[0] is not None:
        return _LIMIT[0]
    env = os.environ.get("INDEXGRAD_MEMORY_LIMIT", "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            value = math.nan
        return _as_limit(value, "INDEXGRAD_MEMORY_LIMIT must be", env)
    known = [n for n in (available_memory(), cgroup_room(), address_space_room()) if n is not None]
    return int(min(known) * 0.8) if known else 8 << 30


def _as_limit(value: object, what: str, text: str | None = None) -> int:
    """A limit in whole bytes; inf (also 1e400, which reads as inf) is NO_LIMIT."""
    shown = repr(text) if text is not None else repr(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise IndexgradError(f"{what} a positive number of bytes (or inf for no limit), got {shown}")
    return NO_LIMIT if value >= NO_LIMIT else int(value)


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def address_space_room(statm: Path = Path("/proc/self/statm")) -> int | None:
    """Bytes of address space left under RLIMIT_AS (`ulimit -v`), or None without that limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        used = int(statm.read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):
        return None
    return max(0, soft - used)


_UNLIMITED_V1 = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded 2^63 - 1


def cgroup_room(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Bytes this process's memory cgroup can still take: the least, over its group and the
    groups above it, of limit less usage; None without a limit (or a cgroup file system).

    `membership` lists the groups (/proc/self/cgroup): `0::/PATH` for cgroup v2, whose files
    are under `root`, and `N:memory:/PATH` for v1, under `root`/memory. In a cgroup namespace
    the path may not exist under the mount, whose root is then the process's own group.
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    rooms: list[int] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, files = root, ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base, files = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        group = base / path.strip("/")
        if not group.is_dir():
            group = base
        while True:
            room = _room(group / files[0], group / files[1])
            if room is not None:
                rooms.append(room)
            if group == base or base not in group.parents:
                break
            group = group.parent
    return min(rooms) if rooms else None


def _room(limit_file: Path, usage_file: Path) -> int | None:
    try:
        text = limit_file.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= _UNLIMITED_V1:
        return None
    try:
        usage = int(usage_file.read_text().strip())
    except (OSError, ValueError):
        usage = 0
    return max(0, int(text) - usage)


def human_bytes(n: int) -> str:
    """A byte count for people: '3.5 GiB'; any size, however large, without overflowing a float."""
    for k, unit in enumerate(("bytes", "KiB", "MiB", "GiB", "TiB")):
        if n < 1024 ** (k + 1) or unit == "TiB":
            if unit == "bytes":
                return f"{n} bytes"
            whole, rest = divmod((n * 10 + 1024**k // 2) // 1024**k, 10)  # rounded, in integers
            return f"{whole}.{rest} {unit}"
    return str(n)


def check_fits(need: int, what: str, *where: Any, smaller: str = "", limit: int | None = None) -> None:
    """Refuse `need` bytes over the memory limit (`limit`, when the caller has read it once for
    many checks), saying what needs them and how to raise it (or, given `smaller`, what to make
    smaller first); `where` is the error's span, file name and source."""
    limit = memory_limit() if limit is None else limit
    if need > limit:
        raise IndexgradError(
            f"{what} would need {human_bytes(need)}, over the memory limit of {human_bytes(limit)}; "
            + (f"use smaller {smaller}, or " if smaller else "")
            + "raise the limit with indexgrad.set_memory_limit() or INDEXGRAD_MEMORY_LIMIT "
            "(a number of bytes, or inf)",
            *where,
        )


# glibc's mallopt settings (malloc.h), and what this process has asked it to keep so far
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX = 32 << 20  # the largest mmap threshold glibc takes on 64-bit systems
_KEPT = [0]


def _mallopt(option: int, value: int) -> bool:
    import ctypes

    return bool(ctypes.CDLL(None).mallopt(option, value))


def keep_freed_memory(peak_bytes: int) -> None:
    """Ask glibc to keep about four times a plan's peak of freed memory for the next call instead
    of handing it back to the system (a forward plan's arrays, its backward's, and room to spare).

    The arrays a step frees come back on the next call as fresh pages otherwise, each one zeroed
    by the kernel when first written: a third of a transformer block's step on the numpy backend
    (b=8 t=64 d=128, 2,000 page faults a step); torch's CPU tensors and XLA's CPU buffers come
    from the same malloc (the torch backend's transformer step: 200-500 a step; the jax backend's
    square matrix chain: 2,000). glibc decides by two thresholds: memory
    freed at the top of its heap beyond the trim threshold is returned, and arrays beyond the
    mmap threshold are mapped and unmapped on their own. Setting either stops glibc's own
    adjusting of both, so both are set: arrays up to 32 MiB come from the heap, and the trim
    threshold only ever grows (it is the whole process's), to at most 1 GiB. Nothing happens
    elsewhere than glibc."""
    want = min(4 * peak_bytes, 1 << 30)
    if want <= _KEPT[0] or platform.libc_ver()[0] != "glibc":
        return
    try:
        if _KEPT[0] == 0:
            _mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)
        _mallopt(_M_TRIM_THRESHOLD, want)
    except (OSError, AttributeError):  # no C library to ask
        return
    _KEPT[0] = want
