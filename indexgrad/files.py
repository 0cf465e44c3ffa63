"""Array files: .npz written atomically (temporary file, fsync, rename), so no reader sees a partial file,
and never over a file the command reads."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import IndexgradError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_npz_atomic(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to `path` as .npz so that no reader ever sees a partial file.

    The arrays go to a temporary file in the same directory, which is flushed and fsynced, given
    the permissions a plain write would have (0666 less the umask) and renamed over `path`
    (os.replace, atomic on POSIX and Windows); on any failure the temporary file is removed, an
    existing `path` is left as it was, and an operating-system error is an IndexgradError.
    """
    target = Path(path)
    directory = target.parent

    def error(reason: str) -> IndexgradError:
        return IndexgradError(f"cannot write {target}: {reason}", filename=str(target))

    if not directory.is_dir():
        raise error("no such directory")
    if target.is_dir():
        raise error("it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise error(e.strerror or str(e)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise error(e.strerror or str(e)) from None
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


def load_npz(path: str | Path, what: str = "inputs file") -> dict[str, np.ndarray]:
    """Every array of an .npz file, read in full with allow_pickle=False.

    A missing, unreadable, empty, non-.npz (a .npy, a pickle, any other bytes), pickled or damaged
    file is an IndexgradError naming the file and saying which; `what` names the file's role.
    """
    name = str(path)

    def error(message: str) -> IndexgradError:
        return IndexgradError(message, filename=name)

    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise error(f"no such file: {name} (the {what})") from None
    except IsADirectoryError:
        raise error(f"the {what} {name} is a directory") from None
    except OSError as e:
        raise error(f"cannot read {name}: {e.strerror or e}") from None
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        if magic.startswith(b"\x93NUMPY"):
            raise error(f"not an .npz archive but a single .npy array; save the {what} with np.savez")
        if magic[:1] == b"\x80":
            raise error("not an .npz archive but a pickle, which is never loaded; save plain arrays")
        raise error("not an .npz archive" + ("" if magic else " (it is empty)"))
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: np.array(z[key]) for key in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise error("the file holds pickled objects, which are never loaded; save plain arrays") from None
        raise error(f"damaged .npz archive ({e})") from None
    except Exception as e:  # BadZipFile, EOFError, NotImplementedError, ...: any damage
        raise error(f"damaged .npz archive ({type(e).__name__}: {e})") from None


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
