"""Atomic file writes: a crash mid-write never leaves a truncated file where a good one was."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on leaving the block without an error it
    replaces ``path`` (``os.replace``: atomic on one file system), and on an error it is
    removed and ``path`` left as it was. Writers that infer a format from the file name
    (matplotlib's ``savefig``) must be told it: the temporary name ends in
    ``.tmp<pid>-<thread>``. The file is flushed to disk (``fsync``) before the rename."""
    path = Path(path)
    # one name per process and thread: two threads saving one path must not share it
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:  # on disk before the rename, so the rename never
            os.fsync(f.fileno())    # exposes an empty file after a power cut
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)``, atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def savefig_atomic(fig: object, path: str | os.PathLike, **kwargs: object) -> None:
    """``fig.savefig(path, **kwargs)``, atomically (:func:`atomic_path`); the format comes
    from ``path``'s suffix (``format=`` overrides it)."""
    fmt = kwargs.pop("format", None) or Path(path).suffix.lstrip(".") or None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)  # type: ignore[attr-defined]
