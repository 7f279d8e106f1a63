"""Pinned data versions: the diff/verify logic on plain folders (fast), and a pin -> tamper -> checkout round
trip in a throwaway git + DVC repo running the project's real data stages on 3 tiny videos (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from omni_r1.versioning import (MAX_LISTED, DataVersionMismatch, UnknownDataVersion, build_record, describe_diff,
                                diff_listing, hash_tree, md5_file, verify_version, write_record)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMALL = {
    "synth": {"videos": 3, "width": 96, "height": 64, "fps": 10, "seconds": 2.0},
    "data": {"low_res": 64, "high_res": 96, "max_frames": 6},
    "detail": {"light_steps": 2, "light_batch": 4, "light_size": 32},
    "global_reasoning": {"max_new_tokens": 8},
    "train": {"steps": 1, "prompts_per_step": 1, "group_size": 2, "max_new_tokens": 8, "seeds": [0],
              "seed_workers": 1, "save_every": 1, "warm_start": {"steps": 1, "batch": 8, "lr": 0.003}},
}
SHARDS_MD5 = "ab" + "0" * 30 + ".dir"  # the fake dvc.lock's hash of data/shards


# --- fast: the listing, the diff and verify on folders with a hand-written dvc.lock ----------------------------

def _fake_workspace(root: Path) -> Path:
    """raw data, shards and features folders plus a dvc.lock naming them (no DVC needed to read it)."""
    for rel, text in {"data/raw/mine/a.txt": "a", "data/raw/mine/sub/b.txt": "b", "data/shards/test-0.tar": "t",
                      "data/features/test-0.safetensors": "f"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    lock = {"schema": "2.0", "stages": {
        "shard": {"outs": [{"path": "data/shards", "md5": SHARDS_MD5, "size": 1, "nfiles": 1}]},
        "features": {"outs": [{"path": "data/features", "md5": "2.dir", "size": 1, "nfiles": 1}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    (root / "data/raw/mine.dvc").write_text(yaml.safe_dump({"outs": [{"path": "mine", "md5": "3.dir"}]}))
    return root


def test_diff_listing_names_added_removed_and_changed() -> None:
    diff = diff_listing({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"})
    assert (diff.added, diff.removed, diff.changed) == (("d",), ("c",), ("b",))
    assert not diff_listing({"a": "1"}, {"a": "1"})


def test_describe_diff_caps_the_list_and_counts_the_rest() -> None:
    names = tuple(f"f{i:03d}" for i in range(MAX_LISTED + 5))
    text = describe_diff("data/shards", diff_listing({n: "x" for n in names}, {n: "y" for n in names}))
    assert text.startswith(f"changed ({MAX_LISTED + 5}): data/shards/f000")
    assert f"data/shards/f{MAX_LISTED - 1:03d}" in text and f"f{MAX_LISTED:03d}" not in text
    assert text.endswith("and 5 more")


def test_verify_names_the_exact_file_and_the_fix(tmp_path: Path) -> None:
    root = _fake_workspace(tmp_path)
    record = build_record(root, "v1", "data/raw/mine", "video", git_commit="", cache_dir=None)
    assert record["outs"]["data/raw/mine"]["tracked_by"] == "data/raw/mine.dvc"
    assert record["outs"]["data/shards"]["tracked_by"] == "dvc.lock:shard"
    assert set(record["outs"]["data/raw/mine"]["files"]) == {"a.txt", "sub/b.txt"}
    write_record(root, record)
    verify_version(root, "v1")  # not a git repo: the record is read from data/versions/v1.json

    (root / "data/raw/mine/sub/b.txt").write_text("tampered")
    (root / "data/features/extra.bin").write_bytes(b"\0")
    (root / "data/shards/test-0.tar").unlink()
    with pytest.raises(DataVersionMismatch) as caught:
        verify_version(root, "v1")
    message = str(caught.value)
    assert "changed (1): data/raw/mine/sub/b.txt" in message
    assert "removed (1): data/shards/test-0.tar" in message
    assert "added (1): data/features/extra.bin" in message
    assert "a.txt" not in message and "omni-r1 data checkout v1" in message


def test_unknown_version_and_untracked_data_are_errors(tmp_path: Path) -> None:
    root = _fake_workspace(tmp_path)
    with pytest.raises(UnknownDataVersion, match="omni-r1 data pin nope"):
        verify_version(root, "nope")
    with pytest.raises(ValueError, match="dvc add PATH"):
        build_record(root, "v1", "data/raw/other", "video", git_commit="", cache_dir=None)
    with pytest.raises(ValueError, match="git tag"):
        build_record(root, "../escape", "data/raw/mine", "video", git_commit="", cache_dir=None)


def test_pin_refuses_files_that_differ_from_dvc_lock(tmp_path: Path) -> None:
    """A version pins what dvc.lock records: an edit DVC's cached .dir listing does not hold is refused."""
    root = _fake_workspace(tmp_path)
    cache = tmp_path / "cache"
    manifest = cache / "files/md5" / SHARDS_MD5[:2] / SHARDS_MD5[2:]  # where DVC 3 caches a .dir listing
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps([{"md5": md5_file(root / "data/shards/test-0.tar"), "relpath": "test-0.tar"}]))
    build_record(root, "v1", "data/raw/mine", "video", git_commit="", cache_dir=cache)
    (root / "data/shards/test-0.tar").write_text("edited")
    with pytest.raises(DataVersionMismatch, match=r"changed \(1\): data/shards/test-0.tar.*dvc commit"):
        build_record(root, "v1", "data/raw/mine", "video", git_commit="", cache_dir=cache)


def test_hash_tree_matches_dvc_md5(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello\n")
    assert hash_tree(tmp_path) == {"x.txt": "b1946ac92492d2347c6235b4d2611184"}


# --- slow: the real thing in a throwaway git + DVC repo ----------------------------------------------------------

def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def _sh(repo: Path, *cmd: str) -> str:
    proc = subprocess.run(list(cmd), cwd=repo, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def make_project(tmp: Path, remote: Path) -> Path:
    """The project's graph, code and params (made small) in a fresh git + DVC repo with a local default remote."""
    repo = tmp / "project"
    repo.mkdir()
    for folder in ("src", "stages", "flows", "reports"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(repo, "git", "init", "-q")
    _sh(repo, "git", "config", "user.name", "omni-r1 test")
    _sh(repo, "git", "config", "user.email", "test@omni-r1.invalid")
    _sh(repo, str(BIN / "dvc"), "init", "-q")
    _sh(repo, str(BIN / "dvc"), "remote", "add", "-d", "--local", "tmpremote", str(remote))
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "project")
    return repo


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("versioning")
    repo = make_project(tmp, tmp / "remote")
    _sh(repo, str(BIN / "dvc"), "repro", "features")
    return repo


@pytest.mark.slow
def test_pin_tamper_checkout_round_trip(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    dvc = ["--repo", str(project), "--dvc", str(BIN / "dvc")]
    assert main(["data", "pin", "v1", *dvc]) == 0
    assert (project / "data/versions/v1.json").is_file()
    assert _sh(project, "git", "tag", "-l", "data/*").split() == ["data/v1"]
    committed = _sh(project, "git", "diff-tree", "--no-commit-id", "--name-only", "-r", "data/v1^{commit}").split()
    assert sorted(committed) == ["data/versions/v1.json", "dvc.lock"]
    assert any((project.parent / "remote").rglob("*.dir"))  # dvc push reached the default remote
    assert main(["data", "verify", "v1", *dvc]) == 0
    assert main(["data", "pin", "v1", *dvc]) == 1  # an existing version is never overwritten

    victim = sorted((project / "data/raw/synthetic/videos").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    capsys.readouterr()
    assert main(["data", "verify", "v1", *dvc]) == 1
    err = capsys.readouterr().err
    assert f"changed (1): data/raw/synthetic/videos/{victim.name}" in err and "omni-r1 data checkout v1" in err
    with pytest.raises(DataVersionMismatch, match=victim.name):
        verify_version(project, "v1")

    # Without the local cache the restore must come from the remote (dvc checkout fails, then dvc pull).
    shutil.rmtree(project / ".dvc/cache")
    capsys.readouterr()
    assert main(["data", "checkout", "v1", *dvc]) == 1  # DVC keeps edits that no cache holds unless told
    assert "--force" in capsys.readouterr().err
    assert main(["data", "checkout", "v1", "--force", *dvc]) == 0
    verify_version(project, "v1")
    assert not _sh(project, "git", "status", "--porcelain", "--", "dvc.lock", "data/versions")
