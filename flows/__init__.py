"""Orchestration: the Prefect pipeline flow over the DVC stages, fan-out helpers, and the ``omni-r1`` CLI."""
