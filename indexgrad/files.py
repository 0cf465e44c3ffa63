"""Output files written atomically (temporary file, fsync, rename), so no reader sees a partial file,
never over a file the command reads; and .npz archives read and written without pickles."""

from __future__ import annotations

import glob
import io
import math
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import IndexgradError
from .memory import check_fits, human_bytes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is another user's
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Remove `.NAME.PID.*.tmp` files beside target that a writer killed before its rename left:
    those whose process no longer runs (a live writer's are its own)."""
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = tmp.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _write_error(target: Path, reason: str) -> IndexgradError:
    return IndexgradError(f"cannot write {target}: {reason}", filename=str(target))


def special_kind(target: Path) -> str | None:
    """What target is when it exists and is neither a regular file nor a directory (a device such
    as /dev/null, a FIFO, a socket): an output renamed over it would replace it with a file."""
    try:
        mode = os.stat(target).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a FIFO"}
    return next((what for test, what in kinds.items() if test(mode)), "a special file")


def check_writable(path: str | Path, flag: str) -> None:
    """Refuse an output path that could not be written, before any work: no such directory, a
    directory or a special file (see special_kind) in its place, or a directory (or file system)
    that takes no new file."""
    target = Path(path)
    if not str(path):
        raise IndexgradError(f"{flag} needs a file name, got ''")
    if not target.parent.is_dir():
        raise IndexgradError(f"{flag} {path}: no such directory {target.parent}{os.sep}")
    if target.is_dir():
        raise IndexgradError(f"{flag} {path} is a directory; give a file name")
    kind = special_kind(target)
    if kind is not None:
        raise IndexgradError(
            f"{flag} {path} is {kind}, not a regular file: the output is written to a new file "
            "renamed over it, which would replace it; give the name of a regular file"
        )
    try:  # the one reliable test, also for root and read-only file systems: make a file there
        _temporary(target).unlink()
    except OSError as e:
        raise IndexgradError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None


def _temporary(target: Path) -> Path:
    """A new empty file `.NAME.PID.XXXXXXXX.tmp` beside target (see remove_stale_temporaries)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the new file to; when the block ends, the file is
    fsynced, given the permission bits of the file it replaces (else 0666 less the umask) and
    renamed over `path` (os.replace: atomic on POSIX and Windows), so no reader ever sees a partial
    file and a failed write leaves the old one in place. On any error the temporary file is
    removed, and an operating-system error is an IndexgradError naming `path`. Temporaries that
    killed writers left beside `path` are removed first (remove_stale_temporaries)."""
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise _write_error(target, "no such directory")
    if target.is_dir():
        raise _write_error(target, "it is a directory")
    kind = special_kind(target)
    if kind is not None:
        raise _write_error(target, f"it is {kind}, which a new file renamed over it would replace")
    remove_stale_temporaries(target)
    try:
        tmp = _temporary(target)
    except OSError as e:
        raise _write_error(target, e.strerror or str(e)) from None
    try:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(target, e.strerror or str(e)) from None
        raise
    try:  # make the rename itself durable; not every platform lets a directory be opened
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def npz_member(name: str) -> str:
    """The archive member an array called `name` is stored as (`name.npy`, as np.savez names it),
    refusing a name np.load would not give back: empty, or holding a NUL, '/' or '\\'."""
    if not isinstance(name, str) or not name or any(c in name for c in "\0/\\"):
        raise IndexgradError(
            f"cannot store an array named {name!r} in an .npz archive: a name must be a non-empty "
            "string without '/', '\\' or NUL"
        )
    return name + ".npy"


def save_npz_atomic(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to `path` as .npz (as np.savez does, without pickles) so that no reader ever
    sees a partial file (see atomic_path).

    The arrays are written one archive member each from the mapping, so any name is fine, also
    those np.savez takes as its own keywords (`file`, `allow_pickle`); see npz_member.
    """
    members = {npz_member(name): np.asanyarray(a) for name, a in arrays.items()}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for member, a in members.items():
            with z.open(member, "w", force_zip64=True) as f:
                try:
                    np.lib.format.write_array(f, a, allow_pickle=False)
                except ValueError as e:  # an object array
                    raise IndexgradError(f"cannot store '{member[:-4]}' in {path}: {e}") from None


def load_npz(path: str | Path, what: str = "inputs file") -> dict[str, np.ndarray]:
    """Every array of an .npz file, read in full with allow_pickle=False.

    A missing, unreadable, empty, non-.npz (a .npy, a pickle, any other bytes), pickled or damaged
    file is an IndexgradError naming the file and saying which; `what` names the file's role.
    """
    name = str(path)
    try:
        f = open(path, "rb")  # once: a pipe (`--inputs <(...)`) cannot be opened again
        with f:
            return _load_npz(f, name, what)
    except FileNotFoundError:
        message = f"no such file: {name} (the {what})"
    except IsADirectoryError:
        message = f"the {what} {name} is a directory"
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        message = f"cannot read {name}: {getattr(e, 'strerror', None) or e}"
    raise IndexgradError(message, filename=name)


def _load_npz(f: BinaryIO, name: str, what: str) -> dict[str, np.ndarray]:
    """load_npz's work on the opened file f."""

    def error(message: str) -> IndexgradError:
        return IndexgradError(message, filename=name)

    magic = f.read(6)
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        if magic.startswith(b"\x93NUMPY"):
            raise error(f"not an .npz archive but a single .npy array; save the {what} with np.savez")
        if magic[:1] == b"\x80":
            raise error("not an .npz archive but a pickle, which is never loaded; save plain arrays")
        raise error("not an .npz archive" + ("" if magic else " (it is empty)"))
    need = 0
    try:
        with zipfile.ZipFile(_rewound(f, magic, what)) as z:
            headers = [(info, _npy_header(z, info)) for info in z.infolist() if not info.is_dir()]
            seen: set[str] = set()
            for info, _ in headers:  # zipfile (and np.load) would read the last: which was meant?
                array = _array_name(info)
                if array in seen:
                    raise _Refused(f"the archive holds two arrays named '{array}'; save each once")
                seen.add(array)
            need = sum(nbytes for _, (_, _, nbytes) in headers)
            if headers:
                info, (shape, dtype, nbytes) = max(headers, key=lambda h: h[1][2])
                largest = f"the largest, '{_array_name(info)}', of shape {shape} {dtype}"
                check_fits(need, f"the arrays of the {what} ({largest})")
            return {_array_name(info): _read_npy(z, info) for info, _ in headers}
    except _Refused as e:
        raise error(str(e)) from None
    except MemoryError:
        raise error(f"not enough memory to read the {what} ({human_bytes(need)} of arrays)") from None
    except IndexgradError as e:
        e.filename = name
        raise
    except Exception as e:  # BadZipFile, EOFError, NotImplementedError, ...: any damage
        raise error(f"damaged .npz archive ({type(e).__name__}: {e})") from None


def _rewound(f: BinaryIO, magic: bytes, what: str) -> BinaryIO:
    """f from its start, for zipfile (which seeks): f itself, or for a pipe, which cannot seek,
    a copy of all it holds (read within the memory limit)."""
    if f.seekable():
        f.seek(0)
        return f
    chunks, total = [magic], len(magic)
    while chunk := f.read(1 << 20):
        total += len(chunk)
        check_fits(total, f"the {what} (read from a pipe)")
        chunks.append(chunk)
    return io.BytesIO(b"".join(chunks))


class _Refused(Exception):
    """Why an archive member cannot be read (said as the archive's IndexgradError)."""


def _array_name(info: zipfile.ZipInfo) -> str:
    return info.filename[:-4] if info.filename.endswith(".npy") else info.filename  # as np.load names it


def _npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and byte count a member declares, read from its .npy header alone, before
    anything is allocated; a member whose data is shorter than declared is damage."""
    fmt = np.lib.format
    with z.open(info) as f:
        try:
            version = fmt.read_magic(f)
        except ValueError:
            raise _Refused(f"the archive member {info.filename!r} is not an .npy array") from None
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        else:  # 3.0 is 2.0 with a UTF-8 header, which only names of record fields need
            shape, _, dtype = fmt.read_array_header_2_0(f)
        start = f.tell()
    if dtype.hasobject:
        raise _Refused("the file holds pickled objects, which are never loaded; save plain arrays")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size - start:
        raise _Refused(
            f"damaged .npz archive: '{_array_name(info)}' declares shape {shape} {dtype} "
            f"({human_bytes(nbytes)}) but holds {human_bytes(max(0, info.file_size - start))}"
        )
    return shape, dtype, nbytes


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One member's array, read into the one array numpy allocates for it (no copy after)."""
    with z.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same file when both exist, else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwrite(out: str | Path, flag: str, reads: Mapping[str, str | Path | None]) -> None:
    """Refuse an output path that is one of the files a command reads (`reads`: role -> path)."""
    for role, path in reads.items():
        if path is not None and same_file(out, path):
            message = f"{flag} {out} is the {role}; writing it would overwrite it, choose another file"
            raise IndexgradError(message)
