"""``AttentionSettings``: which attention kernel a model runs, and how — stated once.

Everything that chooses an attention setting reads its defaults from here: the kernels'
keyword defaults, :func:`~pipelines.attention.patch_attention`, the preset files
(:mod:`pipelines.preset_files`), :func:`pipelines.load_model` and the CLI.

Two named starting points, because two kinds of caller want different things:

* :data:`DEFAULT` — what :func:`pipelines.load_model` gives a checkpoint file when told
  nothing: the network as trained (``exact`` at the trained window), so a loaded official
  checkpoint reproduces the official outputs (DESIGN §6 keeps ``attention="exact"`` as the
  library's stable default).
* :data:`RUN_DEFAULT` — what a run of the tool uses when neither the user nor the preset says:
  PnP-Nystra with the paper's SwinIR setting (16 landmarks, 2 iterations). Every built-in preset
  states its own, which wins over this.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple, Union

MODES = ("exact", "nystrom", "auto")

#: A window size: W (square), (h, w), or (t, h, w) for 3-D (video) windows.
Window = Union[int, Tuple[int, ...]]


@dataclass(frozen=True)
class AttentionSettings:
    """The attention kernel (``mode``) and its options; ``window`` None: the trained window.

    ``landmarks`` and ``iters`` apply to ``nystrom`` (and to ``auto`` where it picks Nyström);
    ``bias_aware`` False makes Nyström drop relative position biases and shift masks, as the
    paper does.
    """

    mode: str = "exact"
    landmarks: int = 16
    iters: int = 2
    window: Optional[Window] = None
    bias_aware: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown attention mode {self.mode!r} (choose from {', '.join(MODES)})")
        if not _is_int(self.landmarks) or self.landmarks < 1:
            raise ValueError(f"landmarks must be an integer >= 1, got {self.landmarks!r}")
        if not _is_int(self.iters) or self.iters < 0:
            raise ValueError(f"iters must be an integer >= 0, got {self.iters!r}")
        window = self.window
        if window is not None:
            sides = window if isinstance(window, tuple) else (window,)
            if len(sides) not in (1, 2, 3) or not all(_is_int(s) and s >= 1 for s in sides):
                raise ValueError(f"window must be W, (h, w) or (t, h, w) of integers >= 1, got {window!r}")

    def override(self, mode: Optional[str] = None, landmarks: Optional[int] = None,
                 iters: Optional[int] = None, window: Optional[Window] = None) -> "AttentionSettings":
        """These settings with every argument that is not None put in its place."""
        changes = dict(mode=mode, landmarks=landmarks, iters=iters, window=window)
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


DEFAULT = AttentionSettings()
RUN_DEFAULT = replace(DEFAULT, mode="nystrom")
