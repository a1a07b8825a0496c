"""The output directory of an audit: checked before any model loads, written all at once at the end.

An audit can run for an hour; finding at its end that ``--out`` cannot be written wastes it, and writing
``result.json`` but failing on ``report.html`` leaves a result without its report (or, worse, a new
result beside an old report). So the directory is proved writable first (by writing and removing a
file in it), and the files are staged as temporary files beside their targets and renamed into place
only when every one of them is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from distill_audit.errors import UsageError


def check_output_dir(out: Path, flag: str = "--out") -> Path:
    """``out`` if it is (or can be made) a writable directory; else one clear UsageError. Leaves nothing
    behind: a directory made for the check is removed again."""
    if out.is_symlink() and not out.exists():
        raise UsageError(f"{flag} {out}: is a symbolic link to {os.readlink(out)}, which does not exist")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out}: exists and is not a directory")
    made: list[Path] = []
    try:
        for parent in reversed([out, *out.parents]):
            if parent.is_symlink() and not parent.exists():
                raise UsageError(f"{flag} {out}: {parent} is a symbolic link to a path that does not exist")
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
            elif not parent.is_dir():
                raise UsageError(f"{flag} {out}: {parent} is not a directory")
        fd, probe = tempfile.mkstemp(prefix=".distill-audit-write-check.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{flag} {out}: cannot write there ({exc.strerror or exc})") from None
    finally:
        for path in reversed(made):
            try:
                path.rmdir()
            except OSError:
                pass
    return out


_PROC_STATUS = "/proc/self/status"  # Linux: holds the process umask, read without changing it


def current_umask() -> int:
    """The process umask. Read from /proc where there is one; otherwise set and restored, briefly to the
    strictest mask, so that a file another thread creates meanwhile is never more open than intended."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o777)
    os.umask(old)
    return old


def write_atomic(path: Path, text: str) -> None:
    """One file, written whole or not at all (see :func:`write_together`)."""
    write_together({path: text})




def write_together(files: Mapping[Path, str]) -> None:
    """Write every file whole, or none of them: each goes to a temporary file beside its target (flushed to
    disk); only then are they renamed into place, and a failed rename puts back what the earlier ones
    replaced. Files get the mode a plain ``open`` would give them under the umask."""
    mode = 0o666 & ~current_umask()
    staged: list[tuple[str, Path]] = []
    moved: list[tuple[Path, str | None]] = []  # target, and where its previous version was put aside
    try:
        for path, text in files.items():
            if path.is_dir():
                raise IsADirectoryError(21, "a directory is in the way", str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
                os.chmod(fh.fileno() if os.chmod in os.supports_fd else tmp, mode)
        for tmp, path in staged:
            backup = None
            if path.exists():
                backup = f"{tmp}.previous"
                try:  # the old version stays reachable until every new file is in place
                    os.link(path, backup)
                except OSError:  # a file system without hard links
                    shutil.copy2(path, backup)
            moved.append((path, backup))
            os.replace(tmp, path)
    except BaseException:
        for path, backup in reversed(moved):
            try:
                if backup is not None:
                    os.replace(backup, path)
                elif path.exists():
                    path.unlink()
            except OSError:
                pass
        raise
    finally:
        for tmp, _ in staged:
            for leftover in (tmp, f"{tmp}.previous"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
