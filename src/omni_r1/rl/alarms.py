"""Collapse and reward-hacking alarms for GRPO: per-step diversity figures and rolling thresholds.

A policy can raise its reward without doing the task: answer the same moments and description for every
prompt, or make System 2 find nothing where nothing earns a floor. ``step_diversity`` measures, for one
step's groups, the signs of that: distinct completions per group, distinct keyframe sets and
descriptions across the step's rollouts, the share of grounded rollouts where System 2 found nothing,
and the share of groups whose rewards are all equal (no learning signal). The trainer logs them in
``train.tsv``; ``CollapseAlarm`` keeps the last ``train.alarms.window`` steps and says, once per crossing,
when a rolling mean crosses its threshold in ``params.yaml``. Sampled rollouts can stay diverse while the
greedy answers collapse, so ``heldout_alarms`` applies the same thresholds to the held-out evaluation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from omni_r1.config import AlarmParams
from omni_r1.systems.collaboration import Rollout

COLUMNS = ("distinct_answers", "distinct_keyframe_sets", "distinct_descriptions", "system2_empty_rate",
           "equal_groups_rate")


def step_diversity(groups: Sequence[Sequence[Rollout]], rewards: Sequence[Sequence[float]]) -> dict[str, float]:
    """The step's diversity figures (``COLUMNS``) from its groups of rollouts and their total rewards."""
    rollouts = [r for group in groups for r in group]
    if not rollouts:
        raise ValueError("a step with no rollouts has no diversity to measure")
    grounded = [r for r in rollouts if r.prompts]
    keyframe_sets = {tuple(p.frame for p in r.prompts) for r in rollouts}
    descriptions = {p.description for r in rollouts for p in r.prompts}
    return {
        "distinct_answers": float(np.mean([len({r.completion for r in g}) / len(g) for g in groups if g])),
        "distinct_keyframe_sets": len(keyframe_sets) / len(rollouts),
        "distinct_descriptions": float(len(descriptions)),
        "system2_empty_rate": float(np.mean([not r.masks.any() for r in grounded])) if grounded else 0.0,
        "equal_groups_rate": float(np.mean([len(set(values)) <= 1 for values in rewards])),
    }


class CollapseAlarm:
    """Rolling means of the diversity figures; ``update`` returns a warning per threshold newly crossed."""

    def __init__(self, params: AlarmParams) -> None:
        self.params = params
        self.history: deque[dict[str, float]] = deque(maxlen=params.window)
        self.raised: set[str] = set()

    def checks(self) -> dict[str, tuple[str, float, str]]:
        """name -> (column, threshold, "min" | "max")."""
        p = self.params
        return {
            "same answers in a group": ("distinct_answers", p.min_distinct_answers, "min"),
            "same keyframes for every prompt": ("distinct_keyframe_sets", p.min_distinct_keyframe_sets, "min"),
            "System 2 finds nothing": ("system2_empty_rate", p.max_system2_empty, "max"),
            "groups with equal rewards": ("equal_groups_rate", p.max_equal_groups, "max"),
        }

    def update(self, step: int, values: dict[str, float]) -> list[str]:
        self.history.append({c: values[c] for c in COLUMNS})
        if len(self.history) < self.params.window:
            return []
        warnings = []
        for name, (column, threshold, kind) in self.checks().items():
            mean = float(np.mean([h[column] for h in self.history]))
            crossed = mean < threshold if kind == "min" else mean > threshold
            if crossed and name not in self.raised:
                bound = "below" if kind == "min" else "above"
                warnings.append(f"step {step}: alarm '{name}': {column} averaged {mean:.2f} over the last "
                                f"{self.params.window} steps, {bound} train.alarms threshold {threshold:g}; the "
                                "policy may be collapsing or gaming the reward (see train.tsv)")
                self.raised.add(name)
            elif not crossed:
                self.raised.discard(name)
        return warnings

    @property
    def active(self) -> list[str]:
        """The alarms raised and not recovered, for the run's summary."""
        return sorted(self.raised)


def heldout_alarms(diversity: dict[str, float], params: AlarmParams) -> list[str]:
    """Alarms on the held-out greedy answers (``omni_r1.rl.heldout`` diversity): one keyframe set for most prompts,
    or System 2 finding nothing too often."""
    raised = []
    if diversity.get("distinct_keyframe_sets", 1.0) < params.min_distinct_keyframe_sets:
        raised.append("held-out: same keyframes for every prompt")
    if diversity.get("system2_empty_rate", 0.0) > params.max_system2_empty:
        raised.append("held-out: System 2 finds nothing")
    return raised
