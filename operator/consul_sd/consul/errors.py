"""The failures of Consul calls, one class per CR status reason.

Every read of :mod:`consul_sd.consul.client` raises one of these, never an aiohttp or JSON
error; ``reason`` is what a CR's status and the CLI show, ``retryable`` whether the client
retries it inside one call. :class:`ConsulCredentialError` is separate: a credential that
cannot be sent is the user's to fix, before any request.
"""

from __future__ import annotations


class ConsulError(Exception):
    """A Consul call that failed; ``reason`` is the CR status reason for it."""

    reason = "ConsulError"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConsulUnreachable(ConsulError):
    reason = "ConsulUnreachable"
    retryable = True


class ConsulRateLimited(ConsulError):
    reason = "ConsulRateLimited"
    retryable = True


class ConsulServerError(ConsulError):
    reason = "ConsulServerError"
    retryable = True


class ConsulACLDenied(ConsulError):
    reason = "ACLDenied"


class ConsulDatacenterUnknown(ConsulError):
    reason = "DatacenterUnknown"


class ConsulBadRequest(ConsulError):
    reason = "ConsulBadRequest"


class ConsulBadResponse(ConsulError):
    reason = "MalformedConsulResponse"


class ConsulCredentialError(ValueError):
    """A token or basic-auth credential that cannot be sent; the message never holds the value."""
