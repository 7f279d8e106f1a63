"""Dataset layouts (plain video, official RefAVS, official ReVOS) parsed into manifest rows, no decoding."""

from __future__ import annotations

from pathlib import Path

from omni_r1.data.formats.common import LayoutError, LayoutMissing
from omni_r1.types import ManifestRow

__all__ = ["LayoutError", "LayoutMissing", "read_layout"]


def read_layout(fmt: str, root: Path, *, refavs_fps: float, revos_fps: float) -> list[ManifestRow]:
    """Dispatch on the layout name used in params.yaml (``data.format``)."""
    if not root.is_dir():
        raise LayoutMissing(f"dataset root {root} does not exist; set data.root in params.yaml or pass --root")
    if fmt == "video":
        from omni_r1.data.formats.video import read_video_layout

        return read_video_layout(root)
    if fmt == "refavs":
        from omni_r1.data.formats.refavs import read_refavs_layout

        return read_refavs_layout(root, refavs_fps)
    if fmt == "revos":
        from omni_r1.data.formats.revos import read_revos_layout

        return read_revos_layout(root, revos_fps)
    raise LayoutError(f"unknown dataset format {fmt!r}; use video, refavs or revos (data.format)")
