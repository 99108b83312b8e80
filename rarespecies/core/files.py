"""Files: atomic output, so a killed stage never leaves a half-written file for DVC to cache,
and input that is read without ever blocking on something that is not a regular file."""

from __future__ import annotations

import codecs
import errno
import fcntl
import glob
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

TEMP_TAG = ".tmp-"  # `.<target name>.tmp-<random>`: the temporary folder of one atomic write
OWNER_LOCK = ".owner.lock"  # inside it, held (flock) by the writing process while it lives
_HELD_LOCKS: set[IO[str]] = set()


def _release_in_child() -> None:
    """A forked child (a pool worker) closes its copies of the locks: a worker orphaned by a
    killed writer must not keep the writer's temporaries from being swept."""
    for lock in _HELD_LOCKS:
        lock.close()
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_release_in_child)


class UnreadableFile(OSError):
    """A path that is not a readable regular file; the message is the reason."""


class NotUtf8(ValueError):
    """A text file that is not UTF-8; the message names the byte, where it is, and the fix."""


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success.

    Works for files and directories alike: the caller writes whatever it wants at the
    yielded path. On an exception the temporary path is removed and `target` is untouched.
    A killed process cannot clean up: its temporary folder is removed by the next write of
    the same target, once no living process holds its lock (see `remove_stale_temporaries`).

    Args:
        target: final path of the output.

    Yields:
        The temporary path to write to (it does not exist yet).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    # Created and locked under a name the sweep ignores, then renamed: a folder with the
    # temporary name always has its lock held while its writer lives.
    fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    lock = (fresh / OWNER_LOCK).open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp_dir = fresh.with_name(fresh.name.replace(".new-", TEMP_TAG, 1))
        fresh.rename(tmp_dir)
    except BaseException:
        lock.close()
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    tmp = tmp_dir / target.name
    _HELD_LOCKS.add(lock)
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _HELD_LOCKS.discard(lock)
        lock.close()


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporary folders that killed writers of `target` left beside it.

    Only folders named for this target are looked at, and only those whose lock no living
    process holds are removed, so a concurrent writer (another process, another container
    sharing the folder) keeps its own. Folders of the older `tempfile.mkdtemp` naming, which
    had no lock, are removed when they hold nothing but the target's name.

    Args:
        target: the output path whose temporaries to sweep.

    Returns:
        The folders removed.
    """
    target = Path(target)
    legacy = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}")
    removed = []
    for folder in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        if folder.name.startswith(f".{target.name}{TEMP_TAG}"):
            if _remove_if_unlocked(folder):
                removed.append(folder)
        elif legacy.fullmatch(folder.name) and {p.name for p in folder.iterdir()} <= {target.name}:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _remove_if_unlocked(folder: Path) -> bool:
    try:
        lock = (folder / OWNER_LOCK).open("r+")
    except FileNotFoundError:  # not ours to judge (or already removed by another sweep)
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer is alive
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading; anything else is refused without blocking.

    A FIFO would block `open()` until a writer comes and a device can be endless, so the
    type is checked first, the file is opened non-blocking, and what was opened is checked
    again (the path may have changed in between).

    Args:
        path: the file.

    Returns:
        The open binary file.

    Raises:
        UnreadableFile: its message says why (missing, dangling symlink, symlink loop,
            permission denied, not a regular file).
    """
    try:
        _require_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except UnreadableFile:
        raise
    except OSError as error:
        raise UnreadableFile(_why(Path(path), error)) from None
    try:
        _require_regular(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as a regular file (see `open_regular`), or None."""
    try:
        open_regular(path).close()
    except UnreadableFile as error:
        return str(error)
    return None


def walk_files(root: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every entry under `root` that is not a folder, without following symlinks.

    Symlinks are listed as entries (a link to a folder, a loop or a dangling link alike) and
    never followed, so a loop cannot recurse; a folder that cannot be listed is returned with
    its reason instead of being skipped silently.

    Args:
        root: the folder to walk.

    Returns:
        The entries, sorted, and the folders that could not be listed with why.
    """
    entries: list[Path] = []
    failed: list[tuple[Path, str]] = []

    def unlisted(error: OSError) -> None:
        failed.append((Path(error.filename), _why(Path(error.filename), error)))

    for folder, dirs, names in os.walk(root, onerror=unlisted):
        entries += [Path(folder, name) for name in names]
        entries += [Path(folder, name) for name in dirs if os.path.islink(Path(folder, name))]
    return sorted(entries), sorted(failed)


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kinds = {stat.S_ISFIFO: "FIFO", stat.S_ISCHR: "character device",
                 stat.S_ISBLK: "block device", stat.S_ISSOCK: "socket", stat.S_ISDIR: "folder"}
        kind = next((name for test, name in kinds.items() if test(mode)), "special file")
        raise UnreadableFile(f"{kind}, not a regular file")


def _why(path: Path, error: OSError) -> str:
    """A short reason for an OSError met opening or listing `path`."""
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "dangling symlink" if path.is_symlink() else "file missing"
    return (error.strerror or str(error)).lower()


def read_utf8(path: str | Path) -> str:
    """A text file people edit (metadata, catalogue, params), as UTF-8 with or without a BOM.

    Raises:
        NotUtf8: `file:line:column:` of the first bad byte, and the fix.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        start = error.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise NotUtf8(
            f"{path}:{line}:{column}: not UTF-8 (byte 0x{data[start]:02x}): re-save it as UTF-8, "
            f"e.g. from Latin-1: iconv -f latin1 -t utf-8 '{path}' > utf8.tmp && mv utf8.tmp "
            f"'{path}'") from None


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_metrics(path: str | Path, figures: dict) -> None:
    """Write a DVC metrics file, refusing anything but numbers (and booleans) at any depth.

    `dvc exp show` gives every key of a metrics file a column: a string, a list or a null
    there makes a column nobody compares, so those belong in a report (reports/*.json).

    Args:
        path: the metrics file (declared under `metrics:` in dvc.yaml).
        figures: nested mappings whose leaves are int, float or bool.

    Raises:
        ValueError: naming the key and the value that is not a number.
    """
    def check(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                check(inner, f"{key}.{name}" if key else str(name))
        elif not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{path}: metric {key!r} is {value!r}, not a finite number: "
                             "put it in the stage's report (reports/*.json) instead")

    check(figures, "")
    write_json(path, figures)


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
