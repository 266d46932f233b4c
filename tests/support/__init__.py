"""Helpers shared by the tests and the benchmarks (not collected: no tests here)."""
