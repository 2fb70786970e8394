"""The fault suite: workers, publishers and relays against a broker that stops, resets
connections, blackholes them or loses a cluster node, each run judged by a checker
that classifies every message (lost, duplicated, effect applied twice).

Run it with `make faults`. Scenarios that need a broker of their own (a stopped node, a
cluster) start throwaway RabbitMQ nodes on spare ports and never touch the shared one.
"""
