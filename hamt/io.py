"""Files, written so that a crash never leaves half a file: atomic writes, atomic folders, hashes, JSON.

Every result, metric, report and manifest in the project goes through these few functions. An atomic
write puts the bytes in a temp file in the same folder (so the rename cannot cross file systems),
fsyncs it, gives it the usual mode (0666 & ~umask: mkstemp makes it 0600) and renames it over the
target: a reader sees the old file or the new one, never a mix. A failed write removes its temp file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

TMP_MARK = ".tmp."  # the infix of every temp file this module creates: ".<name>.tmp.<random>"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: some file systems refuse directory fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: str | Path) -> Path:
    """A fresh temp file name beside ``path`` (same folder, hidden, carrying ``TMP_MARK``)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, mode 0666 & ~umask, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8 text, atomically, ending with a newline."""
    write_bytes_atomic(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars and paths end up in summaries: store them as plain values.
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def to_json(obj: Any) -> str:
    """The project's JSON text: indented, key order kept, numpy/torch scalars as numbers."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    write_text_atomic(path, to_json(obj))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``final``; on success it replaces ``final`` in one rename.

    A failed run removes the temp folder and leaves any previous ``final`` untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_MARK}", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    mask = _umask()
    tmp.chmod(0o777 & ~mask)  # mkdtemp makes it private; the published folder should not be
    for p in tmp.rglob("*"):  # nor what writers put in it through temp files of their own (safetensors: 0600)
        if p.is_symlink():
            continue
        exe = p.is_dir() or p.stat().st_mode & 0o100
        p.chmod((0o777 if exe else 0o666) & ~mask)
    replace_dir(tmp, final)


def replace_dir(src: str | Path, final: str | Path) -> None:
    """Move folder ``src`` to ``final``, replacing what is there with two renames (old one removed after)."""
    src, final = Path(src), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f".{final.name}.old.{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(src, final)
    fsync_dir(final.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def write_failure(e: BaseException) -> str:
    """Why a write failed, in a few words (a full disk named as such, whatever raised it)."""
    if isinstance(e, OSError):
        return "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "unexpected pos" in text or "file write failed" in text:
        return "the write stopped short: disk full?"
    return text[:160]


def free_space(folder: str | Path) -> str:
    """``"<N> MiB free there"`` for ``folder``'s file system (or that it is unknown)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free there"
    except OSError:
        return "free space unknown"



def describe_os_error(e: OSError) -> str:
    """One line for a failed file operation: what, where, and the free space when the disk is full."""
    where = e.filename or "a file"
    line = f"{where}: {e.strerror or e}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = Path(where).parent if e.filename else Path(".")
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        line += f" ({free_space(folder)}); free disk space or point the output elsewhere"
    return line


def json_sha256(obj: Any) -> str:
    """Hex SHA-256 of ``obj`` as canonical JSON (sorted keys): the identity of a resolved configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def dir_sha256(folder: str | Path) -> dict:
    """SHA-256 of every file under ``folder`` and one digest over the (relative path, sha256) pairs."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    total = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in files.items()).encode()).hexdigest()
    return {"sha256": total, "files": files}


class FolderBusy(OSError):
    """Another process holds the folder's lock (``holder``: its pid as it wrote it, or None)."""

    def __init__(self, folder: Path, holder: int | None):
        super().__init__(errno.EWOULDBLOCK, "folder in use", str(folder))
        self.folder, self.holder = folder, holder


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str = ".hamt.lock") -> Iterator[Path]:
    """Hold an exclusive OS lock (``fcntl.flock``) on ``folder`` while the block runs; ``FolderBusy`` if taken.

    The lock is on the file ``<folder>/<name>``, which holds the holder's pid. The kernel releases it when
    the process dies, however it dies, so a killed run never blocks its own resume. The file is removed on
    release; a process that locked a file just removed (another inode than the path's) tries again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise FolderBusy(folder, int(holder) if holder.isdigit() else None) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it as we opened it: lock the new file
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
