"""The one wait of the system tests that is not about a unit or the journal: poll a condition
until it holds or a deadline passes, and fail naming what was awaited and showing what was seen."""

import time


def wait_until(cond, what: str, timeout: float, interval: float = 0.2, context=None):
    """Polls `cond` until it returns something true (returned) or `timeout` seconds pass (fails
    naming `what`, followed by `context()`'s text when given: the logs that say why, such as
    provider_host.journal_tail)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            try:
                seen = f"\n{context()}" if context is not None else ""
            except Exception as e:  # noqa: BLE001 - the timeout is the failure to report
                seen = f"\n(no context: {e})"
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")
        time.sleep(interval)
