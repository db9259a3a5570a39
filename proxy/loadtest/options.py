"""What a ``floodgate loadtest`` run is given: :class:`LoadTestOptions`, its bounds and defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.config import Price

if TYPE_CHECKING:
    from .prompts import Prompt

DEFAULT_URL = "http://127.0.0.1:8080/v1"
DEFAULT_KEY = "sk-loadtest"
DEFAULT_DURATION_S = 10.0
MAX_DURATION_S = 3600.0
MAX_REQUESTS = 1_000_000
MAX_RATE = 10_000.0
MAX_CONCURRENCY = 4096
MAX_IN_FLIGHT = 10_000


class UsageError(ValueError):
    """Bad options or input files; ``run`` prints it and exits with status 2."""


@dataclass(frozen=True)
class LoadTestOptions:
    """Everything a run needs; build it with :func:`options_from_args` or directly."""

    url: str = DEFAULT_URL
    rate: float | None = None  # open loop: requests per second
    concurrency: int | None = None  # closed loop: workers
    duration: float = DEFAULT_DURATION_S
    requests: int | None = None
    model: str = "auto"
    key: str = DEFAULT_KEY
    stream: bool = False
    max_tokens: int | None = None
    timeout: float = 60.0
    prompts: Sequence[Prompt] = ()  # empty: the built-in mix
    prompts_source: str = "built-in e-commerce mix"
    seed: int | None = 1
    headers: Mapping[str, str] = field(default_factory=dict)
    max_in_flight: int = 1000  # open loop: connection pool size
    prices: Mapping[str, Price] | None = None  # model -> price, for the cost estimate
    prices_source: str | None = None

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise UsageError("give exactly one of --rate (open loop) or --concurrency "
                             "(closed loop)")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise UsageError(f"--rate must be within (0, {MAX_RATE:g}]")
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"--concurrency must be within 1..{MAX_CONCURRENCY}")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise UsageError(f"--duration must be within (0, {MAX_DURATION_S:g}] seconds")
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise UsageError(f"--requests must be within 1..{MAX_REQUESTS}")
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"--url must be an http(s):// URL, got {self.url!r}")

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"
