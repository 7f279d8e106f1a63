"""One paper table reproduced: the paper's Omni-R1 numbers, this run's, and the difference, as markdown.

The ``paper`` stage (``stages/paper.py``; ``omni-r1 reproduce --table refavs|revos`` runs it in a DVC
experiment) writes ``reports/paper_<table>.md`` with ``paper_table_markdown``. Pure: it takes the paper's
rows (``reports/paper_numbers.yaml``), this run's numbers and a description of the run, and returns text.

- ReVOS: J&F per expression type (referring, reasoning, overall) from ``data/eval/metrics.json``.
- RefAVS: the Ref-AVS metrics the paper reports, from the ``refavs`` section of ``data/eval/metrics.json``
  (computed by ``omni_r1.eval.scoring``, the ``omni-r1 score refavs`` code): J is the mIoU and F the
  F-score (beta^2 = 0.3) on the seen (``test_s``) and unseen (``test_u``) splits, J&F their mean; the
  null split (``test_n``) has S. Data without RefAVS splits has no such numbers; the table then says so
  instead of inventing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

Table = Literal["refavs", "revos"]
TABLES: tuple[Table, ...] = ("refavs", "revos")
BENCHMARK = {"refavs": "RefAVS", "revos": "ReVOS"}
REFERENCE_METHOD = "Omni-R1 †"  # the paper's own two-system model (camera-ready)
REVOS_TYPES = ("referring", "reasoning", "overall")
REFAVS_SPLITS = {"test_s": "seen", "test_u": "unseen"}
METRICS = ("JF", "J", "F")
METRIC_LABEL = {"JF": "J&F", "J": "J", "F": "F"}

RunNumbers = dict[str, dict[tuple[str, str], float]]  # policy -> (split, metric) -> value x100


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run beside the numbers."""

    data_version: str
    data_root: str
    data_format: str
    checkpoint: str
    detail: str
    experiment: str
    synthetic: bool


def revos_numbers(summary: Mapping[str, Any]) -> RunNumbers:
    """This run's ReVOS-style numbers per policy from ``metrics.json`` (types absent from the data are left out)."""
    return {policy: {(t, m): float(s[t][m]) for t in REVOS_TYPES if t in s for m in METRICS if m in s[t]}
            for policy, s in summary.items()}


def refavs_numbers(summary: Mapping[str, Any]) -> RunNumbers:
    """Per policy, the Ref-AVS numbers of ``metrics.json`` (x100): J = mIoU, F = F-score, J&F; S on null.

    Keys are (``seen``/``unseen``, ``J``/``F``/``JF``) and (``null``, ``S``); a policy without a ``refavs``
    section (data that is not RefAVS) has none.
    """
    numbers: RunNumbers = {}
    for policy, s in summary.items():
        refavs = s.get("refavs", {})
        for split, name in REFAVS_SPLITS.items():
            if split in refavs:
                m = refavs[split]
                numbers.setdefault(policy, {}).update(
                    {(name, "J"): float(m["mIoU"]), (name, "F"): float(m["F"]), (name, "JF"): float(m["JF"])})
        if "test_n" in refavs:
            numbers.setdefault(policy, {})[("null", "S")] = float(refavs["test_n"]["S"])
    return numbers


def paper_rows(paper: Sequence[Mapping[str, Any]], table: Table) -> list[Mapping[str, Any]]:
    """The paper's entries of this table's benchmark, in file order."""
    return [row for row in paper if row["benchmark"] == BENCHMARK[table]]


def paper_table_markdown(table: Table, paper: Sequence[Mapping[str, Any]], run: RunNumbers, info: RunInfo,
                         policies: Sequence[str]) -> str:
    """``reports/paper_<table>.md``: comparison with Omni-R1 †, the paper's other methods, the run's provenance."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; use one of {list(TABLES)}")
    rows = paper_rows(paper, table)
    reference = [r for r in rows if r["method"] == REFERENCE_METHOD]
    if not reference:
        raise ValueError(f"reports/paper_numbers.yaml has no {BENCHMARK[table]} entry for {REFERENCE_METHOD!r}; "
                         "restore it from spec section 6")
    sections = [f"# Omni-R1 paper table: {BENCHMARK[table]}", _provenance(info)]
    if info.synthetic:
        sections.append("**These numbers are from synthetic data with tiny models and are not comparable to the "
                        "paper's.** They show that the evaluation path runs end to end, nothing more.")
    missing = [p for p in policies if not run.get(p)]
    if missing:
        sections.append(_missing_note(table, missing))
    sections += [f"## {REFERENCE_METHOD} (paper) and this run (x100; difference = this run - paper)",
                 _comparison(reference, run, policies)]
    if table == "refavs":
        sections.append(_refavs_note(run, policies))
    sections += ["## Other methods in the paper", _others(rows)]
    return "\n\n".join(sections) + "\n"


def _provenance(info: RunInfo) -> str:
    version = (f"`{info.data_version}` (git tag `data/{info.data_version}`), verified before the run"
               if info.data_version else "none: the workspace's data, not pinned (`omni-r1 data pin NAME` pins it, "
               "`omni-r1 reproduce` evaluates a pinned version)")
    experiment = (f"`{info.experiment}` (`dvc exp show` lists its params and metrics)" if info.experiment
                  else "none: a plain `dvc repro`")
    return "\n".join([
        f"- data version: {version}",
        f"- data: `{info.data_root}` ({info.data_format} layout){' - synthetic' if info.synthetic else ''}",
        f"- System 1 checkpoint: `{info.checkpoint}`",
        f"- System 2: {info.detail}",
        f"- DVC experiment: {experiment}",
    ])


def _refavs_note(run: RunNumbers, policies: Sequence[str]) -> str:
    """How the RefAVS cells are made, and this run's null-split S (the paper prints none for Omni-R1)."""
    text = ("J is the Ref-AVS mIoU and F its F-score (beta^2 = 0.3), per clip at 256x256 and averaged over "
            "clips, as `omni-r1 score refavs` computes them; J&F is their mean. Binary masks are scored as "
            "probabilities 0/1.")
    nulls = [f"`{p}` {run[p][('null', 'S')]:.1f}" for p in policies if ("null", "S") in run.get(p, {})]
    if nulls:
        text += " Null split (`test_n`), S x100 (lower is better): " + ", ".join(nulls) + "."
    return text


def _missing_note(table: Table, policies: Sequence[str]) -> str:
    if table == "refavs":
        why = ("its data has no RefAVS seen/unseen test samples (`test_s`/`test_u` in metadata.csv); point "
               "`data.root` at a RefAVS root with `data.format: refavs` to fill these cells")
    else:
        why = "its metrics.json has no referring/reasoning numbers for it"
    return f"This run has no numbers for {', '.join(f'`{p}`' for p in policies)}: {why}."


def _comparison(reference: Sequence[Mapping[str, Any]], run: RunNumbers, policies: Sequence[str]) -> str:
    header = ["split", "metric", "paper"]
    for policy in policies:
        header += [f"{policy}", f"{policy} diff"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in reference:
        key = (row["split"], row["metric"])
        cells = [row["split"], METRIC_LABEL.get(row["metric"], row["metric"]), _fmt(row["value"])]
        for policy in policies:
            ours = run.get(policy, {}).get(key)
            cells += [_fmt(ours), "-" if ours is None else f"{ours - float(row['value']):+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _others(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| method | split | metric | value | source |", "|---|---|---|---|---|"]
    for row in rows:
        if row["method"] != REFERENCE_METHOD:
            lines.append(f"| {row['method']} | {row['split']} | {METRIC_LABEL.get(row['metric'], row['metric'])} | "
                         f"{_fmt(row['value'])} | {row['source']} |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def is_synthetic(data_root: str, synth_out: str, raw_tracked_by: str) -> bool:
    """True when the data is the synthetic generator's: under ``synth.out``, or the output of the ``synth`` stage."""
    root, synth = _parts(data_root), _parts(synth_out)
    return root[:len(synth)] == synth or raw_tracked_by == "dvc.lock:synth"


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))
