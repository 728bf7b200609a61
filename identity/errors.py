"""Typed errors.

Every error the product raises on purpose is an `IdentityError`. Each class carries
its CLI exit code and HTTP status, so the mapping is written once, here, and the CLI
and the API only read it. Exit codes: 0 success, 1 a negative answer (verify said
"different"), 2 bad input, 3 model or configuration problem, 4 a backing service
(database, broker, index) unavailable, 5 not found or conflicting state.
"""

from __future__ import annotations


class IdentityError(Exception):
    """Base class. `code` is a stable machine-readable name."""

    exit_code: int = 2
    http_status: int = 400
    code: str = "error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.path is not None:
            body["path"] = self.path
        return body


# --- bad input (exit 2) -------------------------------------------------------------


class InputError(IdentityError):
    exit_code = 2
    http_status = 422
    code = "invalid_input"


class ImageDecodeError(InputError):
    """The bytes are not a readable image (empty, truncated, not an image, unsupported)."""

    code = "unreadable_image"


class ImageTooLargeError(InputError):
    """The image declares more pixels than allowed (decompression-bomb guard)."""

    code = "image_too_large"
    http_status = 413


class UnknownModelError(InputError):
    """A model named in a request is not in the registry (`identity models list`); the
    configured model missing is a ModelNotFoundError, the server's problem."""

    code = "unknown_model"


class PayloadTooLargeError(InputError):
    code = "payload_too_large"
    http_status = 413


class NoFaceError(InputError):
    code = "no_face"


class MultipleFacesError(InputError):
    code = "multiple_faces"


class PathNotAllowedError(InputError):
    code = "path_not_allowed"
    http_status = 403


# --- model / configuration (exit 3) ------------------------------------------------


class ConfigError(IdentityError):
    exit_code = 3
    http_status = 500
    code = "configuration_error"


class ModelError(IdentityError):
    exit_code = 3
    http_status = 503
    code = "model_error"


class ModelNotFoundError(ModelError):
    """Unknown model name, or its weight file is missing."""

    code = "model_not_found"


class ModelCorruptError(ModelError):
    """A weight file exists but its checksum or contents are wrong."""

    code = "model_corrupt"


class ModelMismatchError(ModelError):
    """Embeddings of different models (or dimensions) were mixed."""

    code = "model_mismatch"


class LicenseNotAcceptedError(ModelError):
    """The model's weights come with terms that restrict their use (e.g. non-commercial
    research only), and the user has not accepted them (`--accept-license`)."""

    http_status = 403
    code = "license_not_accepted"


# --- backing services (exit 4) ------------------------------------------------------


class ServiceUnavailableError(IdentityError):
    exit_code = 4
    http_status = 503
    code = "service_unavailable"


class StoreError(ServiceUnavailableError):
    code = "store_error"


class SpoolFullError(ServiceUnavailableError):
    """The upload spool is at its quota (`spool_quota_bytes`): running jobs hold it."""

    http_status = 507
    code = "insufficient_storage"


class IndexUnavailableError(ServiceUnavailableError):
    code = "index_unavailable"


class NoWorkerError(ServiceUnavailableError):
    """A broker is configured but no Celery worker is alive to do the work."""

    code = "no_worker"


# --- state (exit 5) -------------------------------------------------------------------


class NotFoundError(IdentityError):
    exit_code = 5
    http_status = 404
    code = "not_found"


class ConflictError(IdentityError):
    exit_code = 5
    http_status = 409
    code = "conflict"


class ModelMoveError(ConflictError):
    """A model move (`identity models migrate`) cannot take this step now: another move is
    open, it is in another state, or faces still lack a vector of the target model."""

    code = "model_move"


class JobEndedError(ConflictError):
    """Work for a job that was cancelled, failed or finished meanwhile: refused before
    anything is written (see identity/store/jobs.py: lock_active)."""

    code = "job_ended"


# --- access (API) ---------------------------------------------------------------------


class AuthenticationError(IdentityError):
    exit_code = 2
    http_status = 401
    code = "unauthenticated"


class PermissionDeniedError(IdentityError):
    exit_code = 2
    http_status = 403
    code = "forbidden"


class RateLimitedError(IdentityError):
    """This API key sent more requests than its scope's rate limit allows."""

    exit_code = 4
    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
