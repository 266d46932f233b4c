"""Benchmarks: run each from the repository root as a module, ``python -m bench.bench_demo``, so that
``webui`` and the test helpers in ``tests.support`` are importable without touching ``sys.path``."""
