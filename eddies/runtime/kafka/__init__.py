"""Kafka deployment: faust-streaming workers that feed eddies' executor in batches.

This package is the only place in eddies that imports faust (and aiokafka). Importing
``eddies`` never imports it.
"""
