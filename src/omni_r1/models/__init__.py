"""Model-side building blocks shared by the two systems, the feature stage and training.

``processor``: the real ``Qwen2_5OmniProcessor``, assembled offline around either a small built-in
tokenizer (tests and the CPU demo) or a local Qwen2.5-Omni checkpoint. Submodules are imported
explicitly (``from omni_r1.models.processor import build_processor``) so that importing this
package stays cheap and does not pull in transformers.
"""
