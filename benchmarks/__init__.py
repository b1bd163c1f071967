"""Benchmark scripts (run as `python benchmarks/<name>.py`); a package only so they share benchmarks.recording."""
