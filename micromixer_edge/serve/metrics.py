"""The Prometheus metrics of /metrics (prometheus_client, one registry per server)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# step latency buckets: a 1m step is ~0.1 ms at batch 1 and a few ms at batch 32
STEP_BUCKETS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("mixer_requests", "Completion requests by outcome", ["outcome"],
                                registry=self.registry)
        self.tokens = Counter("mixer_tokens_generated", "Bytes (tokens) generated", registry=self.registry)
        self.cached = Counter("mixer_prompt_tokens_cached", "Prompt tokens resumed from the prompt cache",
                              registry=self.registry)
        self.cache_bytes = Gauge("mixer_prompt_cache_bytes", "Bytes the prompt cache holds", registry=self.registry)
        self.queue_depth = Gauge("mixer_queue_depth", "Requests waiting for a row", registry=self.registry)
        self.active_rows = Gauge("mixer_active_rows", "Rows in the shared decode step", registry=self.registry)
        self.states = Counter("mixer_states", "Conversation states: returned to clients, resumed, refused",
                              ["event"], registry=self.registry)
        self.step_seconds = Histogram("mixer_step_seconds", "One decode step for all live rows",
                                      buckets=STEP_BUCKETS, registry=self.registry)

    def watch(self, counts) -> None:
        """Read the gauges from `counts() -> (active rows, queued requests)` at each scrape: the
        same numbers /health reports, never a copy that goes stale."""
        self.active_rows.set_function(lambda: counts()[0])
        self.queue_depth.set_function(lambda: counts()[1])

    def watch_cache(self, cache) -> None:
        self.cache_bytes.set_function(lambda: cache.nbytes if cache is not None else 0)

    def finished(self, reason: str, stats) -> None:
        """A job ended (`stats`: its runtime GenerationStats)."""
        self.requests.labels(outcome=reason).inc()
        self.tokens.inc(stats.new_tokens)
        self.cached.inc(stats.cached_tokens)

    def text(self) -> bytes:
        return generate_latest(self.registry)
