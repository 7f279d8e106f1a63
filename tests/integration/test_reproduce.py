"""Paper-table reproduction: the pure table writer (fast), and ``omni-r1 reproduce --table revos`` on a pinned
synthetic data version in a throwaway git + DVC repo (slow).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from omni_r1.eval.paper import RunInfo, is_synthetic, paper_table_markdown, refavs_numbers, revos_numbers
from omni_r1.eval.tables import load_paper_numbers
from tests.integration.test_versioning import BIN, _sh, make_project

REPO = Path(__file__).resolve().parents[2]
PAPER = load_paper_numbers(REPO / "reports/paper_numbers.yaml")
SUMMARY = {"global_reasoning": {"referring": {"J": 50.0, "F": 60.0, "JF": 55.0, "n": 4},
                                "reasoning": {"J": 30.0, "F": 40.0, "JF": 35.0, "n": 2},
                                "overall": {"J": 40.0, "F": 50.0, "JF": 45.0}, "samples": 6}}


def _info(synthetic: bool) -> RunInfo:
    return RunInfo(data_version="v1", data_root="data/raw/synthetic", data_format="video", checkpoint="builtin:tiny",
                   detail="backend `light`", experiment="paper-revos-v1-x", synthetic=synthetic)


def _cells(text: str, first: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_revos_table_has_paper_run_and_difference() -> None:
    text = paper_table_markdown("revos", PAPER, revos_numbers(SUMMARY), _info(synthetic=False), ["global_reasoning"])
    assert _cells(text, "overall") == ["overall", "J&F", "44.7", "45.0", "+0.3"]
    assert _cells(text, "reasoning") == ["reasoning", "J&F", "36.9", "35.0", "-1.9"]
    assert "| VISA-13B | overall | J&F | 50.9 | paper |" in text  # the paper's other methods, for context
    assert "not comparable" not in text and "`data/v1`" in text


def test_synthetic_data_is_said_plainly() -> None:
    text = paper_table_markdown("revos", PAPER, revos_numbers(SUMMARY), _info(synthetic=True), ["global_reasoning"])
    assert "**These numbers are from synthetic data with tiny models and are not comparable" in text
    assert is_synthetic("data/raw/synthetic", "data/raw/synthetic", "dvc.lock:synth")
    assert is_synthetic("./data/raw/synthetic/revos", "data/raw/synthetic", "data/raw/synthetic/revos.dvc")
    assert is_synthetic("data/raw/mine", "data/raw/synthetic", "dvc.lock:synth")  # written by the synth stage
    assert not is_synthetic("data/raw/refavs", "data/raw/synthetic", "data/raw/refavs.dvc")


def test_refavs_numbers_are_the_refavs_metrics_per_split() -> None:
    # the evaluate stage's metrics.json: Ref-AVS mIoU / F-score (x100) per split, S on null
    summary = {"p": {"refavs": {"test_s": {"mIoU": 30.0, "F": 50.0, "JF": 40.0, "JF_ci": [35.0, 45.0], "n": 2},
                                "test_u": {"mIoU": 70.0, "F": 90.0, "JF": 80.0, "n": 1},
                                "test_n": {"S": 12.5, "n": 1}}},
               "q": {"referring": {"J": 1.0, "F": 1.0, "JF": 1.0}}}  # data without RefAVS splits
    run = refavs_numbers(summary)
    assert run["p"][("seen", "JF")] == 40.0 and run["p"][("seen", "J")] == 30.0  # J is the mIoU
    assert run["p"][("unseen", "F")] == 90.0 and run["p"][("null", "S")] == 12.5
    assert "q" not in run
    text = paper_table_markdown("refavs", PAPER, run, _info(synthetic=True), ["p"])
    assert _cells(text, "seen")[:5] == ["seen", "J&F", "47.2", "40.0", "-7.2"]
    assert _cells(text, "unseen")[:5] == ["unseen", "J&F", "74.2", "80.0", "+5.8"]
    assert "J is the Ref-AVS mIoU and F its F-score (beta^2 = 0.3)" in text and "`p` 12.5" in text


def test_refavs_table_on_data_without_refavs_splits_says_why() -> None:
    text = paper_table_markdown("refavs", PAPER, refavs_numbers({}), _info(synthetic=True), ["global_reasoning"])
    assert "no RefAVS seen/unseen test samples" in text
    assert _cells(text, "seen")[:5] == ["seen", "J&F", "47.2", "-", "-"]


@pytest.mark.slow
def test_reproduce_revos_on_a_pinned_synthetic_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    repo = make_project(tmp_path, tmp_path / "remote")
    # predict depends on the train stage's export, so the small project trains first (1 warm-start step,
    # 1 GRPO step); the reproduction below then evaluates builtin:tiny on the pinned data.
    _sh(repo, str(BIN / "dvc"), "repro", "train")
    common = ["--repo", str(repo), "--dvc", str(BIN / "dvc")]
    assert main(["data", "pin", "v1", *common]) == 0
    reproduce = ["reproduce", "--table", "revos", "--data-version", "v1", "--checkpoint", "builtin:tiny", *common]

    annotations = repo / "data/raw/synthetic/annotations.jsonl"
    original = annotations.read_bytes()
    annotations.write_bytes(original + b"\n")
    capsys.readouterr()
    assert main(reproduce) == 1  # a run refuses to start on other data
    assert "changed (1): data/raw/synthetic/annotations.jsonl" in capsys.readouterr().err
    assert not (repo / "data/predictions").exists()
    annotations.write_bytes(original)

    assert main(reproduce) == 0
    text = (repo / "reports/paper_revos.md").read_text()
    assert "| overall | J&F | 44.7 |" in text  # the paper's Omni-R1 † ReVOS overall
    assert "not comparable" in text and "`builtin:tiny`" in text
    assert (repo / "data/eval/metrics.json").is_file()
    experiments = _sh(repo, str(BIN / "dvc"), "exp", "list", "--name-only")
    assert "paper-revos-v1-" in experiments


def test_paper_stage_writes_the_table_and_says_where_the_numbers_come_from(tmp_path: Path) -> None:
    """The DVC stage (what `reproduce` runs in its experiment) on an evaluate stage's metrics.json."""
    import json

    from stages.paper import main

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(SUMMARY))
    common = ["--params", str(REPO / "params.yaml"), "--eval", str(metrics), "--paper",
              str(REPO / "reports/paper_numbers.yaml"), "--set", "predict.policies=[global_reasoning]"]
    unpinned = tmp_path / "paper_revos.md"
    assert main([*common, "--out", str(unpinned)]) == 0
    text = unpinned.read_text()
    assert _cells(text, "overall") == ["overall", "J&F", "44.7", "45.0", "+0.3"]
    assert "- data version: none: the workspace's data, not pinned" in text
    assert "- DVC experiment: none: a plain `dvc repro`" in text

    pinned = tmp_path / "paper_refavs.md"
    settings = ["paper.table=refavs", "paper.data_version=v7", "paper.experiment=paper-refavs-v7-x",
                "global_reasoning.checkpoint=/ckpt/omni", "detail.backend=sam2", "detail.sam2_checkpoint=/ckpt/sam2.pt"]
    assert main([*common, *[a for s in settings for a in ("--set", s)], "--out", str(pinned)]) == 0
    text = pinned.read_text()
    assert "# Omni-R1 paper table: RefAVS" in text and "no RefAVS seen/unseen test samples" in text
    assert "`v7` (git tag `data/v7`)" in text and "`paper-refavs-v7-x`" in text
    assert "`/ckpt/omni`" in text and "backend `sam2`, checkpoint `/ckpt/sam2.pt`" in text


def test_paper_stage_without_metrics_names_the_stage_to_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from stages.paper import main

    out = tmp_path / "paper_revos.md"
    code = main(["--params", str(REPO / "params.yaml"), "--eval", str(tmp_path / "missing.json"),
                 "--paper", str(REPO / "reports/paper_numbers.yaml"), "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "run the evaluate stage first" in caplog.text
