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
