"""Path safety: a path named by a dataset or a tar never escapes its root, and shard keys are plain names.

A shard key always fits a plain ustar header: the longest member name, ``<key>.expressions.json``,
stays within tar's 100-byte name field, however long the id it was derived from.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

MAX_KEY_CHARS = 80  # + ".expressions.json" (17) = 97 <= tar's 100-byte name field
_KEY_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{MAX_KEY_CHARS - 1}}}$")
_HASH_CHARS = 8


class PathEscapeError(ValueError):
    """A relative path from a dataset that cannot be used safely: it leaves the root, loops, or is not a path."""


def safe_join(root: Path, relative: str) -> Path:
    """Join ``relative`` onto ``root`` and refuse anything that leaves ``root`` (``..``, absolute, links out)."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute() or "\x00" in relative:
        raise PathEscapeError(f"path {relative!r} must be a non-empty path relative to {root}")
    root_resolved = root.resolve()
    lexical = Path(os.path.normpath(root_resolved / relative))
    if not lexical.is_relative_to(root_resolved):
        raise PathEscapeError(f"path {relative!r} escapes the dataset root {root}; use a plain name without '..'")
    try:
        joined = (root_resolved / relative).resolve(strict=False)
    except (OSError, RuntimeError) as err:  # RuntimeError: Python 3.11's "Symlink loop"
        raise PathEscapeError(
            f"path {relative!r} under {root} is a symbolic link loop ({err}); replace the link with the file itself"
        ) from err
    if not joined.is_relative_to(root_resolved):
        raise PathEscapeError(
            f"path {relative!r} is a symbolic link to {joined}, outside the dataset root {root}; "
            "copy the file into the dataset root (or link to a file inside it)"
        )
    return joined


def sample_key(sample_id: str) -> str:
    """A WebDataset key for a sample id: letters, digits, '_' and '-' only, stable, collision-free, at most 80 chars.

    WebDataset splits a member name at its first dot and treats '/' as folders, so ids such as
    ``MeViS/abc/0`` are rewritten; a rewritten or over-long id gets a short hash so two ids never share
    a key, and the key fits a tar header whatever the id's length.
    """
    plain = re.sub(r"[^A-Za-z0-9_-]", "_", sample_id.replace("/", "__")).lstrip("_-") or "sample"
    if plain != sample_id or len(plain) > MAX_KEY_CHARS:
        digest = hashlib.sha1(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
        plain = f"{plain[:MAX_KEY_CHARS - _HASH_CHARS - 1]}-{digest}"
    return plain


def check_key(key: str) -> str:
    """Return ``key`` if it is a plain shard key, else raise: nothing with '/', '..' or dots goes into a tar."""
    if not _KEY_PATTERN.match(key):
        raise PathEscapeError(
            f"shard key {key!r} is not a plain name (letters, digits, '_', '-', at most {MAX_KEY_CHARS}); "
            "build keys with sample_key()"
        )
    return key
