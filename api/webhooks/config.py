"""How a webhook worker runs (``keel worker``'s options): its own module, so the CLI reads the
defaults without importing the worker and its HTTP stack."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    #: Requests in flight at once.
    concurrency: int = 256
    #: Requests in flight to one endpoint at once (the rest of its claimed deliveries wait their turn):
    #: a backlog for one customer never opens hundreds of connections to their server.
    per_endpoint: int = 32
    #: Deliveries claimed per statement.
    batch_size: int = 128
    #: How long a claim is held; must outlast a request (the timeout) with room to record it.
    lease_seconds: float = 60.0
    #: A 2xx must arrive within this many seconds, all told.
    request_timeout: float = 15.0
    #: Longest sleep between looks at the queue (a NOTIFY wakes the worker sooner).
    poll_interval: float = 1.0
    #: How long finished deliveries gather before their round is recorded (one statement a round).
    record_linger: float = 0.05
    reap_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.batch_size < 1 or self.per_endpoint < 1:
            raise ValueError("concurrency, batch size and per-endpoint concurrency must be at least 1")
        if self.record_linger < 0 or self.record_linger >= self.lease_seconds:
            raise ValueError("a round must be recorded well within its leases")
        if self.request_timeout <= 0 or self.lease_seconds <= self.request_timeout:
            raise ValueError("the lease must be longer than the request timeout")
