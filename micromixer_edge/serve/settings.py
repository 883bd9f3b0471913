"""What mixer-serve is configured with (the CLI's flags, one dataclass)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str
    host: str = "127.0.0.1"           # localhost unless told otherwise
    port: int = 8080                  # 0: an ephemeral port (printed when ready)
    threads: int = 1                  # onnxruntime intra-op threads
    max_batch: int = 32               # rows stepping together
    max_queue: int = 128              # requests waiting for a row; past it: 429
    max_prompt_bytes: int = 65536     # past it: 413
    max_tokens_limit: int = 4096      # the largest max_tokens a request may ask for
    shutdown_seconds: float = 5.0     # SIGTERM/SIGINT: in-flight streams end within this

    def __post_init__(self):
        for name in ("max_batch", "max_queue", "max_prompt_bytes", "max_tokens_limit", "threads"):
            if getattr(self, name) < 1:
                from ..format import MixerError
                raise MixerError(f"--{name.replace('_', '-')} must be at least 1")
