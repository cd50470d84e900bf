"""Throughput benchmarks of eddies against plain-Python loops over the same events.

Run ``python -m benchmarks`` (``--n 20000`` for a smoke run); see README "Performance".
"""
