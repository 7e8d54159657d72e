"""The stages of `benchmarks/gpu_check.py`, one module each, plus what they share.

Each stage runs in its own process under a hard time limit and writes its
figures to a JSON file as it goes (`stage_io.StageResult`), so a stage that
fails or runs out of time leaves what it measured and the others still run.
"""
