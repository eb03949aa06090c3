"""The keyframe timeline picture: relevance to the question over time, the chosen keyframes, and their thumbnails."""

import os
from pathlib import Path

import numpy as np
import torch

from vilamp.processing import KeyframeSelection

# Figure size in inches at `dpi`: the PNG is exactly (width * dpi) x (height * dpi) pixels.
FIGURE_SIZE_INCHES = (12.0, 6.0)
DEFAULT_DPI = 100
MAX_THUMBNAILS = 12
THUMBNAIL_HEIGHT = 96


def _import_matplotlib():
    """Imports matplotlib's object-oriented API (no pyplot, no global backend), naming the package when missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Drawing pictures needs matplotlib: install it with `pip install matplotlib` (or `pip install vilamp[cli]`)."
        ) from error
    return Figure, FigureCanvasAgg


def format_seconds(seconds: float) -> str:
    """`75.0` -> `1:15`; under a minute, `12.5 s`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def thumbnail(siglip_frame: torch.Tensor, aspect_ratio: float, height: int = THUMBNAIL_HEIGHT) -> np.ndarray:
    """A small RGB image `(height, width, 3)` of a SigLIP frame `(3, size, size)`, restored to the video's aspect ratio."""
    from PIL import Image

    image = Image.fromarray(siglip_frame.permute(1, 2, 0).cpu().numpy())
    width = max(int(round(height * aspect_ratio)), 1)
    return np.asarray(image.resize((width, height), resample=Image.Resampling.BILINEAR))


def shown_keyframes(keyframe_indices: list[int], limit: int = MAX_THUMBNAILS) -> list[int]:
    """At most `limit` keyframes, evenly spread over all of them, for the thumbnail strip."""
    if len(keyframe_indices) <= limit:
        return keyframe_indices
    positions = np.linspace(0, len(keyframe_indices) - 1, limit).round().astype(int)
    return [keyframe_indices[position] for position in positions]


def draw_keyframe_timeline(
    path,
    *,
    timestamps_seconds: list[float],
    keyframes: KeyframeSelection,
    siglip_frames: torch.Tensor,
    question: str,
    relevance_threshold: float,
    aspect_ratio: float = 4 / 3,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """
    Draws why the keyframes were chosen and saves it as a PNG of `FIGURE_SIZE_INCHES * dpi` pixels (through a
    temporary file).

    Top: the CLIP relevance of every sampled frame to the question over time, the relevance floor of the ranking, the
    keyframes the ranking chose (red) and those that fill the remaining slots evenly (orange). Bottom: thumbnails of
    the keyframes (at most `MAX_THUMBNAILS`, evenly spread) with their timestamps.

    Args:
        path: the PNG to write.
        timestamps_seconds (`list[float]`): the time of each sampled frame.
        keyframes (`KeyframeSelection`): what the processor's `select_keyframes` returned: `relevance_scores` (cosine
            of each frame with the question), `keyframe_mask` (all keyframes) and `ranked_keyframe_mask` (the keyframes
            chosen by relevance), each of shape `(num_frames,)`.
        siglip_frames (`torch.ByteTensor` of shape `(num_frames, 3, size, size)`): the frames, for the thumbnails.
        question (`str`): the question, for the title.
        relevance_threshold (`float`): the relevance floor of the ranking.
        aspect_ratio (`float`, *optional*): width / height of the video, for the thumbnails.
        dpi (`int`, *optional*, defaults to 100): pixels per inch of the PNG.
    """
    Figure, FigureCanvasAgg = _import_matplotlib()
    times = np.asarray(timestamps_seconds, dtype=float)
    scores = keyframes.relevance_scores.float().cpu().numpy()
    keyframe_indices = keyframes.keyframe_mask.nonzero().flatten().tolist()
    ranked = keyframes.ranked_keyframe_mask.cpu().numpy().astype(bool)
    filled = keyframes.keyframe_mask.cpu().numpy().astype(bool) & ~ranked

    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=dpi)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(
        2, 1, height_ratios=[1.5, 1.0], hspace=0.35, left=0.07, right=0.98, top=0.88, bottom=0.04
    )
    curve = figure.add_subplot(grid[0])
    curve.plot(
        times, scores, color="#4a6fa5", linewidth=1.2, marker="." if len(times) <= 200 else None, label="relevance"
    )
    curve.axhline(relevance_threshold, color="grey", linestyle="--", linewidth=0.8, label="relevance floor")
    for index in keyframe_indices:
        curve.axvline(times[index], color="#d62728" if ranked[index] else "#ff9f1c", alpha=0.25, linewidth=1)
    curve.scatter(
        times[ranked], scores[ranked], color="#d62728", zorder=3, s=36, label="keyframe: ranked by relevance"
    )
    curve.scatter(
        times[filled], scores[filled], facecolors="none", edgecolors="#ff9f1c", zorder=3, s=36, linewidths=1.5,
        label="keyframe: even fill",
    )  # fmt: skip
    curve.set_xlabel("time (s)")
    curve.set_ylabel("CLIP cosine(frame, question)")
    if len(times) > 1:
        margin = 0.01 * (times[-1] - times[0])
        curve.set_xlim(times[0] - margin, times[-1] + margin)
    curve.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, ncol=4, frameon=False)
    shown_question = question if len(question) <= 90 else question[:87] + "..."
    figure.suptitle(
        f"\u201c{shown_question}\u201d: {len(keyframe_indices)} keyframes of {len(times)} frames "
        f"({int(ranked.sum())} ranked, {int(filled.sum())} filled)",
        fontsize=11,
    )

    shown = shown_keyframes(keyframe_indices)
    if shown:
        strip = grid[1].subgridspec(1, len(shown), wspace=0.08)
        for column, index in enumerate(shown):
            axis = figure.add_subplot(strip[0, column])
            axis.imshow(thumbnail(siglip_frames[index], aspect_ratio))
            axis.set_xticks([])
            axis.set_yticks([])
            color = "#d62728" if ranked[index] else "#ff9f1c"
            for spine in axis.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2)
            axis.set_title(format_seconds(times[index]), fontsize=8, color=color)
        if len(shown) < len(keyframe_indices):
            figure.text(
                0.98, 0.005, f"{len(shown)} of {len(keyframe_indices)} keyframes shown", ha="right", fontsize=7
            )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    try:
        figure.savefig(temporary, dpi=dpi, format="png")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


__all__ = ["draw_keyframe_timeline", "format_seconds"]
