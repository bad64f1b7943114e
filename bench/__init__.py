"""Benchmarks of the PTT server: fan-out capacity, latency, floor access, late entry, memory,
connection setup, a profile of the hot path, and baselines (a transcoding relay, Janus).

`make bench` runs `python -m bench.run_all`, which writes docs/performance.md and docs/perf/*.png.
Every benchmark is bounded in count and time, and all traffic stays on 127.0.0.1.
"""
