"""Pinned data versions: a record of exactly which raw data, shards and features a run reads.

A data version ``NAME`` is a git tag ``data/NAME`` on a commit that holds ``dvc.lock`` and
``data/versions/NAME.json``. The record lists, for each pinned folder (the raw data root,
``data/shards``, ``data/features``), DVC's hash of the folder and the md5 of every file in it,
the same per-file hash DVC keeps in its ``.dir`` manifest. Checking a workspace against a version
is then a plain comparison of file listings, and a mismatch names the files that differ.

This module is the pure part: building, reading and comparing records. The git and DVC commands
that commit, tag, push and restore a version live in ``flows/data_versions.py``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import yaml

from omni_r1.fileio import atomic_write_json

VERSIONS_DIR = "data/versions"
TAG_PREFIX = "data/"
PINNED_OUTS = ("data/shards", "data/features")  # plus the raw data root, which params.yaml names
MAX_LISTED = 20  # files named per kind of difference in an error message; the rest are counted
_CHUNK = 1 << 20


class DataVersionMismatch(ValueError):
    """The workspace's data differs from a pinned data version; the message lists the files and the fix."""


class UnknownDataVersion(DataVersionMismatch):
    """No record of the named data version exists (no git tag and no file in ``data/versions``)."""


@dataclass(frozen=True)
class FileDiff:
    """How a folder differs from its record: relative paths, sorted."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def record_path(name: str) -> str:
    """The record's path relative to the repository root (also its path inside the tagged commit)."""
    check_name(name)
    return f"{VERSIONS_DIR}/{name}.json"


def tag_name(name: str) -> str:
    check_name(name)
    return f"{TAG_PREFIX}{name}"


def check_name(name: str) -> None:
    """Version names become a file name and a git tag: letters, digits, ``.``, ``_``, ``-`` only."""
    ok = bool(name) and all(c.isalnum() or c in "._-" for c in name) and not name.startswith((".", "-"))
    if not ok or name.endswith(".lock") or ".." in name:
        raise ValueError(f"data version name {name!r} is not usable as a file name and git tag; use letters, "
                         "digits, '.', '_' and '-' (e.g. v1, refavs-2026-11)")


def md5_file(path: Path) -> str:
    """The md5 of the file's bytes: DVC 3's per-file hash."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """``{relative posix path: md5}`` of every file under ``root`` (a single file maps its own name)."""
    if root.is_file():
        return {root.name: md5_file(root)}
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): md5_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def diff_listing(recorded: Mapping[str, str], current: Mapping[str, str]) -> FileDiff:
    """Files added, removed and changed in ``current`` relative to ``recorded``."""
    return FileDiff(added=tuple(sorted(set(current) - set(recorded))),
                    removed=tuple(sorted(set(recorded) - set(current))),
                    changed=tuple(sorted(k for k in set(recorded) & set(current) if recorded[k] != current[k])))


def tracked_outs(repo_root: Path, paths: list[str]) -> dict[str, dict[str, Any]]:
    """DVC's entry (md5, size, nfiles and where it is tracked) for each path, from dvc.lock or ``PATH.dvc``.

    Pipeline outputs are found in ``dvc.lock``; data added with ``dvc add`` or ``dvc import`` in its
    ``.dvc`` file beside it.
    """
    found: dict[str, dict[str, Any]] = {}
    lock = repo_root / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    for stage, entry in stages.items():
        for out in entry.get("outs", []):
            if out["path"] in paths:
                found[out["path"]] = {**_hash_fields(out), "tracked_by": f"dvc.lock:{stage}"}
    for path in paths:
        dvc_file = repo_root / f"{path}.dvc"
        if path not in found and dvc_file.is_file():
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
            if outs:
                found[path] = {**_hash_fields(outs[0]), "tracked_by": dvc_file.relative_to(repo_root).as_posix()}
    missing = [p for p in paths if p not in found]
    if missing:
        raise ValueError(f"{', '.join(missing)}: not tracked by DVC in {lock} or a .dvc file; run `dvc repro` "
                         "for pipeline outputs, or `dvc add PATH` / `dvc import URL PATH` for raw data, then pin")
    return found


def _hash_fields(out: Mapping[str, Any]) -> dict[str, Any]:
    return {"md5": out.get("md5"), "size": out.get("size"), "nfiles": out.get("nfiles")}


def dir_manifest(cache_dir: Path, md5: str) -> dict[str, str] | None:
    """DVC's own listing of a folder (``{relpath: md5}``) from its cache, or None when it is not cached."""
    if not md5.endswith(".dir"):
        return None
    path = cache_dir / "files" / "md5" / md5[:2] / md5[2:]
    if not path.is_file():
        return None
    return {entry["relpath"]: entry["md5"] for entry in json.loads(path.read_text())}


def build_record(repo_root: Path, name: str, data_root: str, data_format: str, git_commit: str,
                 cache_dir: Path | None) -> dict[str, Any]:
    """The record of version ``name``: DVC's entry and the file listing of each pinned folder.

    Refuses (DataVersionMismatch) when a folder on disk differs from the listing DVC cached for the
    hash in dvc.lock: a version must pin what dvc.lock says, not uncommitted edits.
    """
    check_name(name)
    paths = [data_root, *[p for p in PINNED_OUTS if p != data_root]]
    outs = tracked_outs(repo_root, paths)
    for path, entry in outs.items():
        entry["files"] = hash_tree(repo_root / path)
        cached = dir_manifest(cache_dir, entry["md5"]) if cache_dir is not None and entry["md5"] else None
        if cached is not None:
            diff = diff_listing(cached, entry["files"])
            if diff:
                raise DataVersionMismatch(
                    f"{path} differs from what {entry['tracked_by']} records; "
                    f"{describe_diff(path, diff)}. Run `dvc status` and then `dvc repro` (or `dvc commit`) to "
                    "record the change, or `dvc checkout` to drop it, before pinning")
    return {"name": name, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit, "data_root": data_root, "data_format": data_format, "outs": outs}


def write_record(repo_root: Path, record: Mapping[str, Any]) -> Path:
    path = repo_root / record_path(str(record["name"]))
    atomic_write_json(path, dict(record))
    return path


def read_record(repo_root: Path, name: str) -> dict[str, Any]:
    """The record of ``name`` as tagged (``git show data/NAME:...``), else the workspace's copy.

    The tagged copy wins because the workspace file can be edited; a repository without the tag
    (e.g. a copy without git history) falls back to ``data/versions/NAME.json``.
    """
    relative = record_path(name)
    show = subprocess.run(["git", "show", f"{tag_name(name)}:{relative}"], cwd=repo_root, capture_output=True,
                          text=True)
    if show.returncode == 0:
        return json.loads(show.stdout)
    local = repo_root / relative
    if local.is_file():
        return json.loads(local.read_text())
    raise UnknownDataVersion(f"data version {name!r}: no git tag {tag_name(name)} and no {local}; list versions "
                             f"with `git tag -l '{TAG_PREFIX}*'` or pin one with `omni-r1 data pin {name}`")


def compare(repo_root: Path, record: Mapping[str, Any]) -> dict[str, FileDiff]:
    """Each pinned folder's difference from the record (empty FileDiffs where it matches)."""
    return {path: diff_listing(entry["files"], hash_tree(repo_root / path)) for path, entry in record["outs"].items()}


def describe_diff(path: str, diff: FileDiff, limit: int = MAX_LISTED) -> str:
    """One line per kind of difference, with at most ``limit`` names each and a count of the rest."""
    parts = []
    for kind, names in (("changed", diff.changed), ("removed", diff.removed), ("added", diff.added)):
        if names:
            shown = ", ".join(f"{path}/{n}" for n in names[:limit])
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            parts.append(f"{kind} ({len(names)}): {shown}{more}")
    return "; ".join(parts)


def verify_version(repo_root: Path, name: str) -> None:
    """Raise DataVersionMismatch unless the workspace holds exactly the files of data version ``name``.

    The message names every differing file (capped per kind, with a count) and the fix.
    """
    repo_root = Path(repo_root)
    record = read_record(repo_root, name)
    differences = {path: diff for path, diff in compare(repo_root, record).items() if diff}
    if differences:
        lines = [f"  {describe_diff(path, diff)}" for path, diff in differences.items()]
        raise DataVersionMismatch(
            f"the data in {repo_root} differs from data version {name!r} (tag {tag_name(name)}):\n"
            + "\n".join(lines)
            + f"\nrestore it with `omni-r1 data checkout {name}`, or pin the current data as a new version "
            "with `omni-r1 data pin NEW_NAME`")
