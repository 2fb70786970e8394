"""Dead letters: the dead-letter record (reason, error, attempts, origin) and the
list / show / replay / purge / export operations, on every broker.

It works through the `broker` contract only, never through a broker SDK.
"""
