"""Writing model files safely: never a half-written file, never an input overwritten.

    tflite_export.save(blob, "model.tflite")

``save`` writes to a new temporary file in the target's folder (a unique name, created
exclusively, so a symlink planted there is never followed), flushes it to disk, then renames
it over the target in one step; on any failure the temporary file is removed and the target
is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Union

PathLike = Union[str, os.PathLike]

__all__ = ["ensure_distinct", "same_path", "save"]


def same_path(a: PathLike, b: PathLike) -> bool:
    """True if ``a`` and ``b`` name the same file or folder (after symlinks), or ``b`` lies inside folder ``a``."""
    real_a, real_b = os.path.realpath(a), os.path.realpath(b)
    if real_a == real_b:
        return True
    if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
        return True
    return os.path.isdir(real_a) and os.path.commonpath([real_a, real_b]) == real_a


def ensure_distinct(output: PathLike, inputs: Iterable[PathLike]) -> None:
    """Raise ``ValueError`` if ``output`` would overwrite one of ``inputs`` (or a file inside an input folder).

    Call it before doing any work, so a refused command has changed nothing.
    """
    for source in inputs:
        if same_path(source, output):
            raise ValueError(
                f"The output path {os.fspath(output)!r} is the input {os.fspath(source)!r} (or inside it); "
                "writing there would destroy the input. Choose another output path."
            )


def save(data: bytes, path: PathLike) -> str:
    """Write ``data`` to ``path`` atomically; returns the path written.

    The bytes go to a uniquely named temporary file next to ``path``, are flushed with
    ``fsync``, and replace ``path`` with one rename, so a reader sees the old file or the whole
    new one. Raises ``FileNotFoundError`` if the folder does not exist and ``IsADirectoryError``
    if ``path`` is a folder; nothing is left behind on failure.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot write {path!r}: the folder {folder!r} does not exist.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot write {path!r}: it is a folder.")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
