"""Runnable example jobs; each is exercised by a test in tests/examples/."""
