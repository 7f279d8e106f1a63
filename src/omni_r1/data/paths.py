"""Path safety: a path named by a dataset or a tar never escapes its root, and shard keys are plain names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")


class PathEscapeError(ValueError):
    """A relative path from a dataset that would resolve outside the dataset root."""


def safe_join(root: Path, relative: str) -> Path:
    """Join ``relative`` onto ``root`` and refuse anything that leaves ``root`` (``..``, absolute, links out)."""
    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        raise PathEscapeError(f"path {relative!r} must be a non-empty path relative to {root}")
    root_resolved = root.resolve()
    joined = (root_resolved / relative).resolve()
    if not joined.is_relative_to(root_resolved):
        raise PathEscapeError(f"path {relative!r} escapes the dataset root {root}; use a plain name without '..'")
    return joined


def sample_key(sample_id: str) -> str:
    """A WebDataset key for a sample id: letters, digits, '_' and '-' only, stable and collision-free.

    WebDataset splits a member name at its first dot and treats '/' as folders, so ids such as
    ``MeViS/abc/0`` are rewritten; a rewritten id gets a short hash so two ids never share a key.
    """
    plain = re.sub(r"[^A-Za-z0-9_-]", "_", sample_id.replace("/", "__")).lstrip("_-") or "sample"
    if plain != sample_id:
        plain = f"{plain[:180]}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"
    return plain


def check_key(key: str) -> str:
    """Return ``key`` if it is a plain shard key, else raise: nothing with '/', '..' or dots goes into a tar."""
    if not _KEY_PATTERN.match(key):
        raise PathEscapeError(
            f"shard key {key!r} is not a plain name (letters, digits, '_', '-'); build keys with sample_key()"
        )
    return key
