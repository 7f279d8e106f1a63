"""The paper's tables beside this run: markdown built from ``reports/paper_numbers.yaml`` and our metrics.

Every figure of this run carries its bootstrap 95% interval over samples as ``value [low, high]``
(``data/eval/metrics.json`` holds them as ``<metric>_ci``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REVOS_SPLITS = ("referring", "reasoning", "overall")
REFAVS_SPLITS = (("test_s", "Seen"), ("test_u", "Unseen"))
# The ablation in the paper's order, each with what it means (omni_r1.eval.predict has the policies).
ABLATION = {
    "predict_nothing": "predict nothing (empty masks)",
    "uniform_keyframes": "System 2 alone: uniform keyframes, original query",
    "keyframes_original_query": "System 1's keyframes, original query",
    "global_reasoning": "full pipeline: System 1's keyframes and rewritten descriptions",
}


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
    for policy in ordered(summary):
        s = summary[policy]
        cells = " | ".join(_ci(s.get(t, {}), "JF") for t in REVOS_SPLITS)
        lines.append(f"| **{policy}** | {cells} | {run_label} |")
    return "\n".join(lines)


def ordered(summary: dict[str, Any]) -> list[str]:
    """The run's policies in the ablation's order, then any others in their own order."""
    return [p for p in ABLATION if p in summary] + [p for p in summary if p not in ABLATION]


def ablation_table(summary: dict[str, Any]) -> str:
    """The paper's ablation on this run's data: referring and reasoning J&F (the headline), null apart.

    Rows in the ablation's order, for the policies the run has; intervals are bootstrap 95% over samples.
    A null expression is right when nothing is predicted, so its J&F says nothing about grounding.
    """
    lines = ["| policy | what System 2 gets | referring J&F | reasoning J&F | overall J&F | null J&F (apart) |",
             "|---|---|---|---|---|---|"]
    for policy in ordered(summary):
        s = summary[policy]
        cells = " | ".join(_ci(s.get(t, {}), "JF") for t in ("referring", "reasoning", "overall", "null"))
        lines.append(f"| `{policy}` | {ABLATION.get(policy, '')} | {cells} |")
    return "\n".join(lines)


def collaboration_verdict(summary: dict[str, Any]) -> str:
    """One plain sentence per headline type: do the full pipeline's J&F intervals lie above both baselines'
    (System 2 alone and predicting nothing)? Empty when the run lacks those policies."""
    needed = ("global_reasoning", "uniform_keyframes", "predict_nothing")
    if not all(p in summary for p in needed):
        return ""
    sentences = []
    for exp_type in ("referring", "reasoning"):
        full = summary["global_reasoning"].get(exp_type, {}).get("JF_ci")
        bounds = [summary[p].get(exp_type, {}).get("JF_ci") for p in needed[1:]]
        if not full or not all(bounds):
            continue
        above = all(full[0] > b[1] for b in bounds)
        verdict = "lies above" if above else "does **not** lie above"
        sentences.append(f"{exp_type.capitalize()}: the full pipeline's J&F interval {verdict} both baselines' "
                         "(System 2 alone, predicting nothing).")
    return " ".join(sentences)


def refavs_table(paper: list[dict[str, Any]], summary: dict[str, Any], run_label: str) -> str:
    """RefAVS with the Ref-AVS metrics: J = mIoU, F = F-score (beta^2 = 0.3), J&F on Seen and Unseen; S on Null.

    The paper's methods first (its J&F / J / F), then each policy of this run, x100 with intervals over clips.
    """
    methods: dict[str, dict[tuple[str, str], float]] = {}
    for row in paper:
        if row["benchmark"] == "RefAVS":
            methods.setdefault(row["method"], {})[(row["split"], row["metric"])] = row["value"]
    names = {"test_s": "seen", "test_u": "unseen"}
    header = "| method | " + " | ".join(f"{label} {m}" for _, label in REFAVS_SPLITS for m in ("J&F", "J (mIoU)", "F"))
    lines = [header + " | Null S (lower is better) | source |", "|---|" + "---|" * 8]
    for method, values in methods.items():
        cells = " | ".join(_fmt(values.get((names[split], m))) for split, _ in REFAVS_SPLITS for m in ("JF", "J", "F"))
        lines.append(f"| {method} | {cells} | - | paper |")
    for policy in ordered(summary):
        refavs = summary[policy].get("refavs", {})
        cells = " | ".join(_ci(refavs.get(split, {}), m) for split, _ in REFAVS_SPLITS for m in ("JF", "mIoU", "F"))
        lines.append(f"| **{policy}** | {cells} | {_ci(refavs.get('test_n', {}), 'S')} | {run_label} |")
    return "\n".join(lines)


def has_refavs(summary: dict[str, Any]) -> bool:
    """True when the evaluation holds Ref-AVS metrics (RefAVS data with test_s/test_u/test_n samples)."""
    return any(s.get("refavs") for s in summary.values())


def run_table(summary: dict[str, Any]) -> str:
    """This run in full: J, F, J&F per expression type with intervals, sample counts and System 1 parse failures."""
    lines = ["| policy | type | n | J | F | J&F |", "|---|---|---|---|---|---|"]
    for policy in ordered(summary):
        s = summary[policy]
        for exp_type in ("referring", "reasoning", "null", "overall"):
            if exp_type in s:
                row = s[exp_type]
                lines.append(f"| {policy} | {exp_type} | {row.get('n', '')} | {_ci(row, 'J')} | {_ci(row, 'F')} | "
                             f"{_ci(row, 'JF')} |")
    lines.append("")
    lines.append("| policy | samples | System 1 parse failures | rate |")
    lines.append("|---|---|---|---|")
    for policy in ordered(summary):
        s = summary[policy]
        lines.append(f"| {policy} | {s['samples']} | {s['parse_failures']} | {100 * s['parse_failure_rate']:.1f}% |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _ci(values: dict[str, Any], metric: str) -> str:
    """``value [low, high]`` from a summary entry, ``-`` when absent; the interval only where it was computed."""
    if values.get(metric) is None:
        return "-"
    interval = values.get(f"{metric}_ci")
    if not interval:
        return _fmt(values[metric])
    return f"{float(values[metric]):.1f} [{float(interval[0]):.1f}, {float(interval[1]):.1f}]"


def heldout_ablation_tables(train: dict[str, Any]) -> str:
    """Per seed, the held-out ablation after GRPO (and before, for the policy's own rows), with intervals."""
    parts = []
    for seed, s in train["seeds"].items():
        after, before = s.get("policies_after"), s.get("policies_before")
        if not after:
            continue
        rows = {**after}
        for name in ("keyframes_original_query", "global_reasoning"):
            if before and name in before:
                rows[f"{name} (before GRPO)"] = before[name]
        diversity = s.get("diversity_after", {})
        parts += [f"Seed {seed}, held-out prompts after GRPO (J&F x100 [bootstrap 95% interval]):", "",
                  ablation_table(rows), ""]
        if s.get("alarms"):
            parts += [f"**Alarms still raised at the end of seed {seed}'s run**: {', '.join(s['alarms'])}.", ""]
        if diversity:
            parts += [f"Answers after GRPO: distinct keyframe sets per prompt {diversity['distinct_keyframe_sets']:.2f}, "
                      f"distinct descriptions {diversity['distinct_descriptions']}, System 2 found nothing on "
                      f"{100 * diversity['system2_empty_rate']:.0f}% of the prompts.", ""]
    return "\n".join(parts)


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
