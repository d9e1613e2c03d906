"""The domain errors of grantexd.

Services and the store raise these; exactly one place, ``grantexd.http.errors``, turns them
into the ``{"message", "code", "requestId"}`` envelope. Each class carries its HTTP status and
its Grantex error code, so a handler never chooses a status itself.

    GrantexError
    ├── BadRequest              400 BAD_REQUEST
    ├── Unauthorized            401 UNAUTHORIZED
    ├── PlanLimitExceeded       402 PLAN_LIMIT_EXCEEDED
    ├── Forbidden               403 FORBIDDEN
    │   ├── ConsentRequired     403 CONSENT_REQUIRED
    │   ├── FidoRequired        403 FIDO_REQUIRED
    │   ├── PolicyDenied        403 POLICY_DENIED
    │   └── DelegationDepthExceeded 403 DELEGATION_DEPTH_EXCEEDED
    ├── NotFound                404 NOT_FOUND
    ├── MethodNotAllowed        405 BAD_REQUEST
    ├── Conflict                409 CONFLICT
    ├── Gone                    410 GONE
    ├── PayloadTooLarge         413 BAD_REQUEST
    ├── UnsupportedMediaType    415 BAD_REQUEST
    ├── RateLimitExceeded       429 RATE_LIMIT_EXCEEDED
    │   └── AuthorizeRateLimited 429 RATE_LIMITED
    └── ServiceUnavailable      503 SERVICE_UNAVAILABLE
        ├── DatabaseUnavailable 503 SERVICE_UNAVAILABLE
        └── ConcurrentUpdate    503 SERVICE_UNAVAILABLE
"""

from __future__ import annotations


class GrantexError(Exception):
    status: int = 500
    code: str = "INTERNAL_ERROR"
    # Principal-session 401 bodies leave out requestId; the SDKs expect that shape there.
    include_request_id: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GrantexError):
    status = 400
    code = "BAD_REQUEST"


class Unauthorized(GrantexError):
    status = 401
    code = "UNAUTHORIZED"


class PlanLimitExceeded(GrantexError):
    status = 402
    code = "PLAN_LIMIT_EXCEEDED"


class Forbidden(GrantexError):
    status = 403
    code = "FORBIDDEN"


class ConsentRequired(Forbidden):
    code = "CONSENT_REQUIRED"


class FidoRequired(Forbidden):
    code = "FIDO_REQUIRED"


class PolicyDenied(Forbidden):
    code = "POLICY_DENIED"


class DelegationDepthExceeded(Forbidden):
    code = "DELEGATION_DEPTH_EXCEEDED"


class NotFound(GrantexError):
    status = 404
    code = "NOT_FOUND"


class MethodNotAllowed(GrantexError):
    status = 405
    code = "BAD_REQUEST"


class Conflict(GrantexError):
    status = 409
    code = "CONFLICT"


class Gone(GrantexError):
    status = 410
    code = "GONE"


class PayloadTooLarge(GrantexError):
    status = 413
    code = "BAD_REQUEST"


class UnsupportedMediaType(GrantexError):
    status = 415
    code = "BAD_REQUEST"


class RateLimitExceeded(GrantexError):
    status = 429
    code = "RATE_LIMIT_EXCEEDED"


class AuthorizeRateLimited(RateLimitExceeded):
    code = "RATE_LIMITED"


class ServiceUnavailable(GrantexError):
    status = 503
    code = "SERVICE_UNAVAILABLE"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL could not be reached or dropped the connection; the request may be retried."""

    def __init__(self, message: str = "The database is unavailable; retry the request shortly") -> None:
        super().__init__(message)


class ForeignKeyViolation(Exception):
    """A store-level write referenced a row that a concurrent transaction deleted."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(constraint or "foreign key constraint")
        self.constraint = constraint


class ConcurrentUpdate(ServiceUnavailable):
    """PostgreSQL aborted the transaction to resolve a deadlock or serialization conflict."""

    def __init__(self) -> None:
        super().__init__("The request conflicted with a concurrent change; retry it")


class UniqueViolation(Exception):
    """A store-level insert hit a unique constraint; services decide what that means."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(constraint or "unique constraint")
        self.constraint = constraint


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """Flatten the exception groups that Trio nurseries raise into their leaf exceptions."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in exc.exceptions:
            leaves.extend(leaf_exceptions(inner))
        return leaves
    return [exc]
