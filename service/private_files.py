"""Files that hold secrets (API key hashes, webhook signing secrets, jobs) are readable by the service's user only.

The SQLite store is created 0600 before SQLite opens it; SQLite gives its `-wal` and `-shm` files the database
file's permissions. A data directory the service creates is 0700. An existing store whose files are readable by
others (made by an older version) is tightened to 0600 when opened.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_directory(path: str | Path) -> Path:
    """`path`, created 0700 (with any missing parents) if it does not exist; an existing one is left as it is."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    return path


def _tighten(path: Path) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(FILE_MODE)


def private_sqlite_file(path: str | Path) -> Path:
    """Create the SQLite database file `path` 0600 (its directory 0700 if new) before SQLite opens it."""
    path = Path(path)
    private_directory(path.parent)
    # Never open an existing database here: closing any descriptor of a file drops every POSIX lock this process
    # holds on it, SQLite's included (another process would then see no reader and reset the WAL).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        _tighten(candidate)
    return path
