"""Benchmark scripts, run as ``python -m d2ppo.bench.<name>``: they print numbers (last line JSON); tests only smoke-run them."""
