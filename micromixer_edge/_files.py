"""Atomic file output shared by every command that writes a file."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import OutputError



def check_output_path(path: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Fail early, before any work, on an output that could not be written or would clobber input."""
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file name")
    if not out.parent.resolve().is_dir():
        raise OutputError(f"output directory {out.parent} does not exist")
    for src in inputs:
        if src is not None and Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
            raise OutputError(f"output {out} is the input file; choose another name")
    return out


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    On any error, or KeyboardInterrupt, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
