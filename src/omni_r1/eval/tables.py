"""The paper's tables beside this run: markdown built from ``reports/paper_numbers.yaml`` and our metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REVOS_SPLITS = ("referring", "reasoning", "overall")


def load_paper_numbers(path: Path) -> list[dict[str, Any]]:
    rows = yaml.safe_load(path.read_text()) or []
    for i, row in enumerate(rows):
        missing = {"benchmark", "split", "metric", "method", "value", "source"} - set(row)
        if missing:
            raise ValueError(f"{path}: entry {i} lacks {sorted(missing)}; every entry needs benchmark, split, "
                             "metric, method, value, source")
    return rows


def revos_table(paper: list[dict[str, Any]], summary: dict[str, Any], run_label: str) -> str:
    """ReVOS-style J&F per type: paper methods, then each policy of this run."""
    methods: dict[str, dict[str, float]] = {}
    for row in paper:
        if row["benchmark"] == "ReVOS" and row["metric"] == "JF":
            methods.setdefault(row["method"], {})[row["split"]] = row["value"]
    lines = ["| method | referring J&F | reasoning J&F | overall J&F | source |", "|---|---|---|---|---|"]
    for method, values in methods.items():
        cells = " | ".join(_fmt(values.get(s)) for s in REVOS_SPLITS)
        lines.append(f"| {method} | {cells} | paper |")
    for policy, s in summary.items():
        cells = " | ".join(_fmt(s.get(t, {}).get("JF")) for t in REVOS_SPLITS)
        lines.append(f"| **{policy}** | {cells} | {run_label} |")
    return "\n".join(lines)


def run_table(summary: dict[str, Any]) -> str:
    """This run in full: J, F, J&F per expression type, sample counts and System 1 parse failures."""
    lines = ["| policy | type | n | J | F | J&F |", "|---|---|---|---|---|---|"]
    for policy, s in summary.items():
        for exp_type in ("referring", "reasoning", "null", "overall"):
            if exp_type in s:
                row = s[exp_type]
                lines.append(f"| {policy} | {exp_type} | {row.get('n', '')} | {_fmt(row['J'])} | {_fmt(row['F'])} | "
                             f"{_fmt(row['JF'])} |")
    lines.append("")
    lines.append("| policy | samples | System 1 parse failures | rate |")
    lines.append("|---|---|---|---|")
    for policy, s in summary.items():
        lines.append(f"| {policy} | {s['samples']} | {s['parse_failures']} | {100 * s['parse_failure_rate']:.1f}% |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def training_table(train: dict[str, Any], warm_start_steps: int, grpo_steps: int) -> str:
    """GRPO on held-out prompts: mean reward and J&F of the starting policy and the trained one, per seed."""
    lines = [
        f"Starting policy: the tiny thinker after a {warm_start_steps}-step supervised warm start that teaches only "
        "the answer format (random moments, the query copied as the description); trained policy: the same after "
        f"{grpo_steps} GRPO steps. Greedy answers on the held-out prompts; J&F (x100) on the sampled frames.",
        "",
        "| seed | reward before | reward after | J&F before | J&F after | parse rate before | parse rate after |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, s in train["seeds"].items():
        lines.append(
            f"| {seed} | {s['reward_before']:.3f} | {s['reward_after']:.3f} | {100 * s['jf_before']:.1f} | "
            f"{100 * s['jf_after']:.1f} | {100 * s['parse_rate_before']:.0f}% | {100 * s['parse_rate_after']:.0f}% |"
        )
    m = train["mean"]
    lines.append(f"| **mean** | **{m['reward_before']:.3f}** | **{m['reward_after']:.3f}** | "
                 f"**{100 * m['jf_before']:.1f}** | **{100 * m['jf_after']:.1f}** | | |")
    cues = sorted({c for s in train["seeds"].values() for c in s["by_cue_before"]})
    lines += ["", "Mean held-out reward per expression cue (before -> after, mean over seeds):", "",
              "| cue | before | after |", "|---|---|---|"]
    for cue in cues:
        before = [s["by_cue_before"][cue] for s in train["seeds"].values() if cue in s["by_cue_before"]]
        after = [s["by_cue_after"][cue] for s in train["seeds"].values() if cue in s["by_cue_after"]]
        lines.append(f"| {cue} | {sum(before) / len(before):.3f} | {sum(after) / len(after):.3f} |")
    return "\n".join(lines)
