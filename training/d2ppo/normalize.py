"""Min-max normalisation of actions and low-dim observations to [-1, 1], stored with the policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RangeNormalizer:
    """Maps each feature linearly from [min, max] to [-1, 1].

    Features with (nearly) constant value (max - min < eps) map to 0 and back to their value,
    so a constant input never divides by zero.
    """

    min: np.ndarray
    max: np.ndarray
    eps: float = 1e-6

    @classmethod
    def fit(cls, x: np.ndarray) -> RangeNormalizer:
        """x: [N, D]."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot fit normaliser: data contains NaN or inf")
        return cls(min=x.min(axis=0).astype(np.float32), max=x.max(axis=0).astype(np.float32))

    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        span = self.max - self.min
        const = span < self.eps
        half = np.where(const, 1.0, span / 2.0).astype(np.float32)
        mid = ((self.max + self.min) / 2.0).astype(np.float32)
        return mid, half

    def normalize(self, x):
        mid, half = self._scale()
        if hasattr(x, "new_tensor"):  # torch tensor: same formula, same dtype/device
            return (x - x.new_tensor(mid)) / x.new_tensor(half)
        return ((np.asarray(x, dtype=np.float32) - mid) / half).astype(np.float32)

    def unnormalize(self, y):
        mid, half = self._scale()
        if hasattr(y, "new_tensor"):
            return y * y.new_tensor(half) + y.new_tensor(mid)
        return (np.asarray(y, dtype=np.float32) * half + mid).astype(np.float32)

    @property
    def dim(self) -> int:
        return int(np.shape(self.min)[0])

    def to_dict(self) -> dict:
        return {"min": [float(v) for v in self.min], "max": [float(v) for v in self.max]}

    @classmethod
    def from_dict(cls, d: dict) -> RangeNormalizer:
        lo = np.asarray(d["min"], dtype=np.float32)
        hi = np.asarray(d["max"], dtype=np.float32)
        if lo.shape != hi.shape or lo.ndim != 1:
            raise ValueError(f"normaliser min/max shapes differ or are not 1-D: {lo.shape} vs {hi.shape}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError("normaliser statistics contain NaN or inf")
        return cls(min=lo, max=hi)
