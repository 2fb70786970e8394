"""The comparison harness: scenarios that measure ordering, redelivery, duplicates,
loss, latency and throughput on each broker, with table and chart reports.

Its assertions are about what it measured, never tuned to one broker.
"""
