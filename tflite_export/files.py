"""Writing model files safely: never a half-written file, never an input overwritten.

    tflite_export.save(blob, "model.tflite")

``save`` writes to a new temporary file in the target's folder (a unique name, created
exclusively, so a symlink planted there is never followed), flushes it to disk, then renames
it over the target in one step; on any failure the temporary file is removed and the target
is left as it was. ``save_all`` does the same for a set of files that belong together (a
model and its report): every file is written and flushed before the first rename, so a failure
while writing leaves the previous set untouched. ``check_output_folder`` tells, before any
work is done, whether a folder can take the output.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Mapping, Union

PathLike = Union[str, os.PathLike]

__all__ = ["check_output_file", "check_output_folder", "ensure_distinct", "same_path", "save", "save_all"]


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


def check_output_folder(folder: PathLike, names: Iterable[str] = ()) -> str:
    """Make sure files ``names`` can be written into ``folder`` before any work is done.

    Creates ``folder`` (and its parents) if missing. Raises ``NotADirectoryError`` if it is a
    file, ``IsADirectoryError`` if one of ``names`` is a folder there, and ``PermissionError``
    if a file cannot be created in it (tried with a temporary file, removed at once). Returns
    the folder path.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"Cannot write into {folder!r}: it is a file, not a folder.")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kerasq-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except PermissionError as error:
        raise PermissionError(f"Cannot write into {folder!r}: permission denied.") from error
    for name in names:
        if os.path.isdir(os.path.join(folder, name)):
            raise IsADirectoryError(f"Cannot write {os.path.join(folder, name)!r}: it is a folder.")
    return folder


def check_output_file(path: PathLike) -> tuple[str, str]:
    """``(path, folder)`` for a file about to be written, checked before any work is done.

    Raises ``FileNotFoundError`` if its folder does not exist and ``IsADirectoryError`` if
    ``path`` is a folder. ``save`` and ``save_all`` check the same.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot write {path!r}: the folder {folder!r} does not exist.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot write {path!r}: it is a folder.")
    return path, folder


def _write_temporary(data: bytes, path: str, folder: str) -> str:
    """Write ``data`` to a new uniquely named file beside ``path``, flushed to disk; returns its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _sync_folder(folder: str) -> None:
    """Flush the folder entry, so the renames survive a power loss (where the OS allows it)."""
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


def save(data: bytes, path: PathLike) -> str:
    """Write ``data`` to ``path`` atomically; returns the path written.

    The bytes go to a uniquely named temporary file next to ``path``, are flushed with
    ``fsync``, and replace ``path`` with one rename, so a reader sees the old file or the whole
    new one. Raises ``FileNotFoundError`` if the folder does not exist and ``IsADirectoryError``
    if ``path`` is a folder; nothing is left behind on failure.
    """
    return save_all({path: data})[0]


def save_all(files: Mapping[PathLike, bytes]) -> list[str]:
    """Write a set of files ``{path: bytes}`` that belong together; returns the paths written.

    Every file first goes to its own temporary file (flushed with ``fsync``); only when all are
    on disk are they renamed over their targets. A failure while writing (a full disk, a size
    limit) removes the temporary files and leaves every target as it was.
    """
    targets = [check_output_file(path) for path in files]
    written: list[tuple[str, str]] = []
    try:
        for (path, folder), data in zip(targets, files.values()):
            written.append((_write_temporary(data, path, folder), path))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    for folder in sorted({folder for _, folder in targets}):
        _sync_folder(folder)
    return [path for path, _ in targets]
