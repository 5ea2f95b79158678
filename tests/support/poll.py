"""Only for tests/support/gateway.py, until it imports harness.poll itself (issue 15's other
half rewrites that module): use harness.poll."""

from harness.poll import eventually

__all__ = ["eventually"]
