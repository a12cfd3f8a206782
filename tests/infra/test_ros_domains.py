"""The domain claim that keeps two test runs on one host apart works across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ros_domains

TESTS = Path(__file__).resolve().parents[1]
CLAIM = "import sys; sys.path.insert(0, {tests!r}); import ros_domains; print(ros_domains.claim_domain({domains}))"


def claim_in_other_process(domains: list[int]) -> subprocess.CompletedProcess:
    code = CLAIM.format(tests=str(TESTS), domains=domains)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_domain_held_here_is_skipped_by_another_process_and_free_again_after_release():
    domains = [230, 231]  # outside every suite's range
    mine = ros_domains.claim_domain(domains)
    try:
        other = claim_in_other_process(domains)
        assert other.returncode == 0, other.stderr
        assert int(other.stdout) == ({230, 231} - {mine}).pop()
        only_mine = claim_in_other_process([mine])
        assert only_mine.returncode != 0 and "in use by another test run" in only_mine.stderr
    finally:
        ros_domains.release_domain(mine)
    again = claim_in_other_process([mine])
    assert again.returncode == 0 and int(again.stdout) == mine


def test_one_process_never_gets_the_same_domain_twice():
    first = ros_domains.claim_domain([232, 233])
    try:
        assert ros_domains.claim_domain([232, 233], start=[232, 233].index(first)) != first
    finally:
        for d in (232, 233):
            ros_domains.release_domain(d)
    with pytest.raises(RuntimeError):
        ros_domains.claim_domain([])
