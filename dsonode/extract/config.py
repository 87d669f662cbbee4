"""How a node extracts lessons from submitted rollouts: the `[extract]` section as an object.

The defaults here are the ones `dsonode.config.settings` declares for `[extract]` (it reads
them from this module, as `[gateway]` reads `GatewayConfig`'s), so they are written once.
Pure: no model, no HTTP. The API key is never a setting: it comes only from the environment
($DSONODE_LLM_API_KEY, see `dsonode.extract.llm.LLMConfig.from_env`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKENDS", "ExtractConfig"]

#: offline: contrastive and extractive, the node's encoder only; llm: an OpenAI-compatible server
BACKENDS = ("offline", "llm")


@dataclass(frozen=True)
class ExtractConfig:
    backend: str = "offline"
    #: OpenAI-compatible base URL (".../v1"); "" = $DSONODE_LLM_BASE_URL
    endpoint: str = ""
    #: model name on that server; "" = $DSONODE_LLM_MODEL
    model: str = ""
    timeout_s: float = 60.0  # per LLM request, whole response
    max_retries: int = 3  # after the first attempt, on 429/5xx/timeouts/connection errors
    concurrency: int = 4  # LLM requests in flight at once
    max_tokens: int = 1024  # per LLM completion
    retrieve_k: int = 5  # existing experiences shown to the LLM per task
    per_group: int = 2  # offline: lessons per task at most

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"extract.backend must be one of {BACKENDS}, got {self.backend!r}")
        checks = [
            ("timeout_s", 0 < self.timeout_s <= 3600),
            ("max_retries", 0 <= self.max_retries <= 10),
            ("concurrency", 1 <= self.concurrency <= 64),
            ("max_tokens", 1 <= self.max_tokens <= 32768),
            ("retrieve_k", 0 <= self.retrieve_k <= 20),
            ("per_group", 1 <= self.per_group <= 16),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"extract.{name} is out of range: {getattr(self, name)!r}")

    @property
    def llm_settings(self) -> dict[str, float | int]:
        """The limits `LLMConfig` takes (the URL and model are resolved with the environment)."""
        return {
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "concurrency": self.concurrency,
            "max_tokens": self.max_tokens,
        }
