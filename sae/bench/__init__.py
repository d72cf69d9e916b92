"""Benchmarks that print speed figures (`attnscope bench ...`); never imported by the library itself.

May import `sae.engine`, `sae.analysis` and `sae.experiments`."""
