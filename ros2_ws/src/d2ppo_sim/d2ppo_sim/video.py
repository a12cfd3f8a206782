"""mp4 of the first episodes, for a person to watch what the policy did."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class EpisodeVideo:
    """Appends uint8 [H, W, 3] frames to one mp4 (H.264 via imageio-ffmpeg)."""

    def __init__(self, path: str | Path, fps: float):
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # macro_block_size=1: frame sizes that are not multiples of 16 are written as they are.
        self._writer = imageio.get_writer(str(self.path), fps=fps, codec="libx264", quality=7, macro_block_size=1)
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        self._writer.append_data(np.ascontiguousarray(frame, dtype=np.uint8))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
