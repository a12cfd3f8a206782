"""ROS_DOMAIN_IDs claimed across processes, so two test runs on one machine never share a DDS domain.

Each suite keeps its own range; within it, ``claim_domain`` takes the first id whose lock file it can
``flock`` (a developer's run and a CI run on the same host skip each other's ids) and holds it until
``release_domain`` or process exit. ``start`` rotates where the search begins, so consecutive tests
do not reuse a domain whose killed processes may still have packets in flight.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

LOCK_DIR = Path(tempfile.gettempdir()) / "d2ppo-ros-domains"
_held: dict[int, int] = {}


def claim_domain(domains: Sequence[int], start: int = 0) -> int:
    """Claim one id of ``domains`` (searched from index ``start``, wrapping); RuntimeError if all are taken."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    order = [domains[(start + i) % len(domains)] for i in range(len(domains))]
    for domain in order:
        if domain in _held:
            continue
        fd = os.open(LOCK_DIR / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _held[domain] = fd
        return domain
    raise RuntimeError(f"every ROS_DOMAIN_ID in {list(domains)} is in use by another test run on this machine")


def release_domain(domain: int) -> None:
    fd = _held.pop(domain, None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock
