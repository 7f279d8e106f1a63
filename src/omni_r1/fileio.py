"""Atomic file writes and owned output folders.

Atomic writes: data goes to a temp file beside the target, then one rename publishes it; a failed
write (a full disk) leaves no temp file and raises ``OutputWriteError`` naming the target.

Owned outputs: a stage that deletes or replaces files in its output folder first claims the folder
(``claim_output_dir``). The folder then carries a marker (``.omni-r1-output.json``) naming the stage
and listing the files the stage wrote, and a rerun deletes only those (plus files matching the
stage's own name patterns, left by a run that died before it could list them). A folder that is, or
is inside, or holds a protected path (the dataset root, the stage's inputs), or that holds files
without the marker, or another stage's marker, is refused with ``OutputOwnershipError``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


PUBLISHED_MODE = 0o644  # temp files are created 0600; published files are readable like any other output
MARKER_NAME = ".omni-r1-output.json"


class OutputWriteError(OSError):
    """Writing an output failed (disk full, no permission); the message names the file and the fix."""


class OutputOwnershipError(ValueError):
    """An output folder that a stage must not write into or delete from; the message says why and what to do."""


def _write_error(path: Path, err: OSError) -> OutputWriteError:
    reason = err.strerror or str(err)
    hint = "free space on that disk or choose another output folder"
    if isinstance(err, PermissionError):
        hint = "make the folder writable for this user or choose another output folder"
    return OutputWriteError(err.errno or 0, f"cannot write {path}: {reason}; {hint}")


def publish(tmp: str | Path, path: Path) -> None:
    """Make a finished temp file readable and rename it over ``path`` (the one atomic step)."""
    os.chmod(tmp, PUBLISHED_MODE)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    tmp_name = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False) as tmp:
            tmp_name = tmp.name
            tmp.write(data)
        publish(tmp_name, path)
    except OSError as err:
        _discard(tmp_name)
        raise _write_error(path, err) from err


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(path: Path, frame: pd.DataFrame | pa.Table) -> None:
    """A pandas dataframe (without its index) or a pyarrow table as parquet, published by one rename."""
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        if hasattr(frame, "to_parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            import pyarrow.parquet as pq

            pq.write_table(frame, tmp)
        publish(tmp, path)
    except OSError as err:
        raise _write_error(path, err) from err
    finally:
        _discard(tmp)


def _discard(tmp: str) -> None:
    if tmp and os.path.lexists(tmp):
        os.remove(tmp)


# ----------------------------------------------------------------------------------------------- owned outputs


def check_output_location(out: Path, protected: Iterable[Path], *, what: str = "--out") -> None:
    """Refuse ``out`` when it is, is inside, or holds one of the ``protected`` paths (a dataset root, an input).

    For single-file outputs too: a manifest written inside the dataset root would change the dataset.
    """
    target = out.resolve()
    for guarded in protected:
        kept = guarded.resolve()
        if target == kept or target.is_relative_to(kept):
            raise OutputOwnershipError(
                f"{what} {out} is inside {guarded}, which this stage reads and must not change; "
                "choose an output folder outside it (e.g. data/...)"
            )
        if kept.is_relative_to(target):
            raise OutputOwnershipError(
                f"{what} {out} holds {guarded}, which this stage reads, and the stage replaces what is in {what}; "
                "choose a folder of its own (e.g. data/shards)"
            )


@dataclass
class OwnedOutput:
    """An output folder claimed by ``stage``: ``clear`` removes what the stage wrote, ``commit`` records it."""

    path: Path
    stage: str
    patterns: tuple[str, ...]
    previous: tuple[str, ...]
    kept: frozenset[str] = frozenset()

    def clear(self) -> None:
        """Delete the files of the last run (listed in the marker, or matching the stage's patterns)."""
        doomed = set(self.previous)
        for pattern in self.patterns:
            doomed.update(p.relative_to(self.path).as_posix() for p in self.path.glob(pattern)
                          if p.is_file() or p.is_symlink())
        doomed.discard(MARKER_NAME)
        for relative in sorted(doomed):
            self._remove(relative)
        self._prune_empty_folders(doomed)
        self.kept = frozenset(_files_under(self.path))
        _write_marker(self.path, self.stage, [], complete=False)

    def commit(self) -> list[str]:
        """Record every file now in the folder that was not there after ``clear`` as written by this stage."""
        written = sorted(set(_files_under(self.path)) - self.kept)
        _write_marker(self.path, self.stage, written, complete=True)
        return written

    def _remove(self, relative: str) -> None:
        path = self.path / relative
        # Only a file directly inside the folder (no "..", no link on the way out) is deleted.
        if ".." in Path(relative).parts or not path.parent.resolve().is_relative_to(self.path.resolve()):
            return
        if path.is_symlink() or path.is_file():
            path.unlink()

    def _prune_empty_folders(self, removed: set[str]) -> None:
        folders = {parent for relative in removed for parent in Path(relative).parents if parent != Path(".")}
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            candidate = self.path / folder
            if candidate.is_dir() and not candidate.is_symlink() and not any(candidate.iterdir()):
                candidate.rmdir()


def claim_output_dir(out: Path, stage: str, *, protected: Sequence[Path], patterns: Sequence[str] = ()) -> OwnedOutput:
    """Claim ``out`` for ``stage`` or raise ``OutputOwnershipError`` naming the folder and the fix.

    ``protected`` are the paths the stage reads (the dataset root, its input folders); ``patterns``
    are glob patterns (relative to ``out``) of the files the stage writes.
    """
    check_output_location(out, protected)
    if out.exists() and not out.is_dir():
        raise OutputOwnershipError(f"--out {out} is a file, not a folder; choose a folder for the {stage} outputs")
    marker = _read_marker(out)
    others = [p for p in _entries(out) if p.name != MARKER_NAME]
    if marker is None and others:
        shown = ", ".join(sorted(p.name for p in others)[:3])
        raise OutputOwnershipError(
            f"--out {out} already holds files that the {stage} stage did not write ({shown}{', ...' if len(others) > 3 else ''}) "
            f"and no {MARKER_NAME}; choose an empty or new folder, or move those files away yourself"
        )
    if marker is not None and marker.get("stage") != stage:
        raise OutputOwnershipError(
            f"--out {out} belongs to the {marker.get('stage')!r} stage (see {out / MARKER_NAME}); "
            f"give the {stage} stage its own folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(out, err) from err
    files = marker.get("files", []) if marker else []
    previous = tuple(str(f) for f in files if isinstance(f, str)) if isinstance(files, list) else ()
    owned = OwnedOutput(out, stage, tuple(patterns), previous)
    _write_marker(out, stage, list(previous), complete=False)  # the folder is the stage's from now on
    return owned


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _files_under(folder: Path) -> list[str]:
    """Relative paths of the files under ``folder`` (links are listed, never followed), the marker excluded."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            relative = (Path(dirpath) / name).relative_to(folder).as_posix()
            if relative != MARKER_NAME:
                found.append(relative)
    return found


def _read_marker(folder: Path) -> dict[str, Any] | None:
    path = folder / MARKER_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputOwnershipError(
            f"{path} is not readable ({err}); delete the folder {folder} yourself if it holds nothing you need"
        ) from err
    if not isinstance(data, dict):
        raise OutputOwnershipError(f"{path} is not an output marker; delete the folder {folder} yourself")
    return data


def _write_marker(folder: Path, stage: str, files: list[str], *, complete: bool) -> None:
    atomic_write_json(folder / MARKER_NAME, {"stage": stage, "complete": complete, "files": files})
