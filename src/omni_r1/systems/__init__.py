"""The two systems of Omni-R1.

- ``global_reasoning``: System 1, the Qwen2.5-Omni thinker that watches the low-res clip (and
  hears the audio), reasons, and picks keyframes with a rewritten description each.
- ``answer``: parsing System 1's completions into typed ``KeyframeSelection`` records and
  System 2's grounding answers into boxes; malformed answers become typed, countable errors.
- ``prompts``: the prompt texts of both systems.
"""
