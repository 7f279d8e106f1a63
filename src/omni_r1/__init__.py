"""Omni-R1: omnimodal reasoning by two-system collaboration, trained with GRPO."""
