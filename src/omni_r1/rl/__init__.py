"""GRPO training of the Global Reasoning System.

- ``grpo``: the RL math as pure, shape-documented tensor functions (group advantages, completion masks, token
  log-probabilities, the k3 KL estimator, the clipped policy loss); no model, no I/O.
- ``rewards``: Omni-R1's hierarchical rewards (format, keyframe, grounding, segmentation, length) as pure
  functions returning named components; ``score_rollouts`` scores one sample's group.
"""
