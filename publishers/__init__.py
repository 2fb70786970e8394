"""Publishing: the typed publish API, batching, confirm handling, retries and circuit
breaking on transient broker faults, and the transactional outbox with its relay.

It publishes through the `broker` contract only; it never consumes.
"""
