"""The one retry policy: how many attempts a piece of work gets, and how long it waits before the next.
A failing shard is retried by its worker, a lost job or shard by the reconciler; both ask this."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # attempts in all, the first included
    backoff_base: float = 2.0  # seconds before attempt n + 1: backoff_base ** n

    def retries(self, attempt: int) -> bool:
        """Whether work that failed (or was lost) on this attempt gets another."""
        return attempt < self.attempts

    def delay(self, attempt: int) -> float:
        return self.backoff_base**attempt
