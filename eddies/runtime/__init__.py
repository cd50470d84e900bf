"""Runs jobs: keyed operators, timers, watermarks, checkpoints, the local runner and the CLI.

``runtime/kafka/`` is the only place that imports faust.
"""
