"""The one wait of the system tests that is not about a unit or the journal: poll a condition
until it holds or a deadline passes, and fail naming what was awaited."""

import time


def wait_until(cond, what: str, timeout: float, interval: float = 0.2):
    """Polls `cond` until it returns something true (returned) or `timeout` seconds pass (fails
    naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
