"""Uploaded files that a worker (or a background thread) must read: spooled under
`data_dir/uploads/<owner>/`, one folder per job or request, removed when it ends.

* An owner is a job id (the folder is created before the job row, with the id the job
  will get) or a request's own id (a synchronous enrollment spools its photos for the
  runner and releases them before it answers).
* `release(data_dir, owner)` removes an owner's folder. Jobs call it when they end:
  succeeded, failed or cancelled (identity/jobs.py); anything that ends a job some other
  way (a cancel, a stale-job reaper) calls it too.
* `leftovers(data_dir)` lists folders and loose files with their age, for the sweep at
  start (`identity.jobs.sweep_spool`), which removes those of ended jobs and orphans.
* The whole spool has a quota (`spool_quota_bytes`): a write that would pass it is
  refused with `SpoolFullError` (HTTP 507) before anything is written. The check and the
  write hold an exclusive lock on `uploads/.lock`, so API processes sharing the volume
  cannot all pass the check at once.

Workers must see the same `data_dir` (a shared volume in docker-compose.yml).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from identity.errors import SpoolFullError

LOCK_NAME = ".lock"


def root(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "uploads"


def new_owner() -> str:
    """A fresh owner id: a UUID, the form job ids take, so a job can adopt it."""
    return str(uuid.uuid4())


def _owner_dir(data_dir: str | os.PathLike, owner: str) -> Path:
    if not owner or "/" in owner or owner.startswith("."):
        raise ValueError(f"not a spool owner: {owner!r}")
    return root(data_dir) / owner


def usage(data_dir: str | os.PathLike) -> int:
    """Bytes held by the spool now (a walk: only live jobs' few files are there)."""
    total = 0
    for folder, _, files in os.walk(root(data_dir)):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # released meanwhile
                pass
    return total


@contextmanager
def _locked(data_dir: str | os.PathLike) -> Iterator[None]:
    directory = root(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write(data_dir: str | os.PathLike, owner: str, files: Sequence[tuple[bytes, str]], *,
          quota: int) -> list[Path]:
    """Write each (bytes, suffix) into the owner's folder; all or, past the quota, none."""
    incoming = sum(len(data) for data, _ in files)
    with _locked(data_dir):
        held = usage(data_dir)
        if held + incoming > quota:
            raise SpoolFullError(
                f"the server's upload spool is full ({held:,} of {quota:,} bytes held by running "
                f"jobs; this upload needs {incoming:,}): try again when jobs have finished")
        folder = _owner_dir(data_dir, owner)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        try:
            for data, suffix in files:
                fd, name = tempfile.mkstemp(dir=folder, suffix=_suffix(suffix))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                paths.append(Path(name))
        except BaseException:
            release(data_dir, owner)
            raise
    return paths


def _suffix(suffix: str) -> str:
    # The decoder does not need it, but a file named like its type is easier to inspect.
    return suffix.lower() if suffix and len(suffix) <= 6 and suffix[1:].isalnum() else ""


def release(data_dir: str | os.PathLike, owner: str) -> None:
    """Remove everything spooled for `owner` (a job id or a request id). Idempotent, and
    safe to call from any process that shares the data directory."""
    shutil.rmtree(_owner_dir(data_dir, owner), ignore_errors=True)


def leftovers(data_dir: str | os.PathLike) -> list[tuple[str, float]]:
    """(name, age in seconds) of everything in the spool but its lock: owner folders, and
    loose files an older version spooled by content hash."""
    directory = root(data_dir)
    if not directory.is_dir():
        return []
    now = time.time()
    found = []
    for entry in os.scandir(directory):
        if entry.name == LOCK_NAME:
            continue
        try:
            found.append((entry.name, now - entry.stat(follow_symlinks=False).st_mtime))
        except FileNotFoundError:
            pass
    return found


def remove(data_dir: str | os.PathLike, name: str) -> None:
    """Remove one leftover `leftovers` named (a folder or a loose file)."""
    path = root(data_dir) / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
