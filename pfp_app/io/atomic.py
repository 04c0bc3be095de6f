"""One way to write a file: to a temporary name in the same folder, then `os.replace` onto the target.

A reader (or a `kill -9`) sees the old file or the new one, never half of one. Temporary names carry the
writer's process id (`.NAME.PID.RANDOM.tmp[.ext]`), so `clean_stale_temps` can remove those left behind
by a killed process without touching a write that is still going on in a live one.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# .NAME.PID.RANDOM.tmp.EXT (this module) and the names older versions wrote: .NAME.RANDOM.tmp.mp4, NAME.tmp
_TEMP_RE = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[0-9a-f]{8}\.tmp(?:\.[A-Za-z0-9]+)?$")
_OLD_TEMP_RE = re.compile(r"^[^.].*\.(?:json|txt|safetensors)\.tmp$")


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh temporary path beside `path`, with its extension kept (ffmpeg picks the format by it)."""
    p = Path(path)
    return p.with_name(f".{p.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{p.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any error it is removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(p)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy `src` onto `dst` so that `dst` is at every moment the old file or the whole new one."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed writer left in `folder` (not recursive); returns them.
    Temps of a live process (this one included: a job may be writing) are kept."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        stale = (m is not None and (m.group("pid") is None or not _pid_alive(int(m.group("pid"))))
                 ) or (m is None and _OLD_TEMP_RE.match(p.name) is not None)
        if stale and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
