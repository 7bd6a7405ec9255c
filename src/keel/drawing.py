"""Text on images with Pillow: what TensorBoard's views (keel.callbacks.tensorboard_views) and
the explanation grids (keel.explain.images) share. Pillow only: no torch, no Lightning."""

from __future__ import annotations

from typing import Any


def font(size: int) -> Any:
    """Pillow's default font at ``size`` pixels; the fixed bitmap font on an old Pillow or one
    built without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def text_box(draw: Any, text: str, face: Any) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of the ink of ``text`` drawn at (0, 0) with ``face``."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    return int(left), int(top), int(right - left), int(bottom - top)


__all__ = ["font", "text_box"]
