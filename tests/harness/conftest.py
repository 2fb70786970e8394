from mailbag.harness import Settings

#: small and impatient: a scenario on memory takes well under a second
FAST = Settings(
    messages=40,
    keys=4,
    consumers=3,
    batch=10,
    retry_every=5,
    retry_delay=0.05,
    grace=0.1,
    idle_timeout=0.5,
    delay_tolerance=0.1,
    jitter=0.001,
)
