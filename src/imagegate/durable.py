"""Small files made once and shared by every process on the data dir (the generated API key, the URL-signing
secret): written whole and synced before their name appears, so that neither a process starting alongside nor a
power cut can see one empty."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def create_once(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` (mode 0600) unless it exists; returns the file's text, which is another
    process's if it made the file first (two would reject each other's links, or keys)."""
    if path.exists():  # every start after the first: nothing to write
        return path.read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".once-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(temp, path)  # atomic, and fails where the name exists: the loser of a race adopts the winner's
    except FileExistsError:
        return path.read_text()
    finally:
        os.unlink(temp)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the name itself survives a power cut too
    finally:
        os.close(directory)
    return text
