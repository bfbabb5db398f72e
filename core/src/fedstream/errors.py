"""The catalog of domain errors, each with its gRPC status, HTTP status and public message."""

from __future__ import annotations

from http import HTTPStatus

import grpc


class FedstreamError(Exception):
    """Base of every error a client may be shown.

    ``public`` is what the caller sees; ``detail`` (optional) goes to the log only.
    """

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal"

    def __init__(self, public: str, *, detail: str | None = None) -> None:
        super().__init__(public)
        self.public = public
        self.detail = detail


class InvalidArgument(FedstreamError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = HTTPStatus.BAD_REQUEST
    code = "invalid_argument"


class InvalidLayout(InvalidArgument):
    """A layout header that is malformed or does not match the model."""

    code = "invalid_layout"


class NonFinite(InvalidArgument):
    """An update holding NaN or infinite values: refused at ingest, before it counts."""

    code = "non_finite_values"


class BadOffset(InvalidArgument):
    """A chunk that leaves a gap, overlaps an earlier one or runs past the layout's end."""

    code = "bad_offset"


class DataLoss(FedstreamError):
    grpc_code = grpc.StatusCode.DATA_LOSS
    http_status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "data_loss"


class ChecksumMismatch(DataLoss):
    code = "checksum_mismatch"


class Truncated(DataLoss):
    code = "truncated"


class CorruptModel(DataLoss):
    """A stored model whose bytes do not match what was recorded when it was written."""

    code = "corrupt_model"


class NotFound(FedstreamError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = HTTPStatus.NOT_FOUND
    code = "not_found"


class RoundNotFound(NotFound):
    code = "round_not_found"


class RunNotFound(NotFound):
    code = "run_not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class AgentNotFound(NotFound):
    code = "agent_not_found"


class FailedPrecondition(FedstreamError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = HTTPStatus.CONFLICT
    code = "failed_precondition"


class NonFiniteResult(FailedPrecondition):
    """A round's result that would hold NaN or infinite values: never committed."""

    code = "non_finite_result"


class StorageUnusable(FailedPrecondition):
    """A store whose files this process cannot use: a path it cannot create or write, a file
    that is not the store's, or one written by a newer version. Raised at start-up."""

    code = "storage_unusable"


class RoundNotOpen(FailedPrecondition):
    code = "round_not_open"


class RoundCancelled(RoundNotOpen):
    """The round's run was cancelled: nothing more of the round is taken or committed. Its
    public message says "round N of run 'X' was cancelled" (``is_cancellation`` tells it from
    other FAILED_PRECONDITION refusals on the client side)."""

    code = "round_cancelled"

    @staticmethod
    def is_cancellation(message: str) -> bool:
        """Whether a FAILED_PRECONDITION status's message is this error's."""
        return message.startswith("round ") and " was cancelled" in message


class RoundClosed(RoundNotOpen):
    """The round closed with the updates it needed (its target, every participant, or its
    minimum at the deadline): an update that comes after is late, refused and never counted.
    For an over-selected round's slower participants this is the normal end of their work.
    Its public message says "round N of run 'X' closed with its K updates" (``is_closure``
    tells it from other FAILED_PRECONDITION refusals on the client side where the call carries
    no code: an upload ended mid-stream)."""

    code = "round_closed"

    @staticmethod
    def is_closure(message: str) -> bool:
        """Whether a FAILED_PRECONDITION status's message is this error's."""
        return message.startswith("round ") and " closed with its " in message
class StaleUpdate(FailedPrecondition):
    """A buffered asynchronous update whose base is more versions behind than the run's
    max_staleness: refused, counted nowhere."""

    code = "stale_update"


class InvalidTransition(FailedPrecondition):
    code = "invalid_transition"


class IncompatibleProtocol(FailedPrecondition):
    """An agent whose protocol version the control plane does not accept (fedstream.protocol)."""

    code = "incompatible_protocol"


class RenewalRefused(FailedPrecondition):
    """An expired certificate that can no longer be renewed without a new enrollment token."""

    code = "renewal_refused"


class SecureAggregationFailed(FailedPrecondition):
    """A secure aggregation round that cannot finish: too few participants answered a step, an
    agent sent inconsistent shares, or the sum would overflow the ring. Nothing is committed."""

    code = "secure_aggregation_failed"


class ProtocolViolation(FailedPrecondition):
    """A secure aggregation message out of its step, sent twice with other contents, or
    asking a participant for what the protocol forbids it to reveal."""

    code = "protocol_violation"


class AlreadyExists(FedstreamError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = HTTPStatus.CONFLICT
    code = "already_exists"


class PermissionDenied(FedstreamError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = HTTPStatus.FORBIDDEN
    code = "permission_denied"


class AgentDisabled(PermissionDenied):
    """An agent an operator disabled: refused until it is enabled again."""

    code = "agent_disabled"

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} is disabled by an operator")


class Unauthenticated(FedstreamError):
    """No credentials, or credentials nobody issued (or that were revoked)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = HTTPStatus.UNAUTHORIZED
    code = "unauthenticated"


class FederationNotFound(NotFound):
    code = "federation_not_found"


class AgentNotSelected(PermissionDenied):
    code = "agent_not_selected"


class Aborted(FedstreamError):
    """A conflict that a retry after a short wait may resolve."""

    grpc_code = grpc.StatusCode.ABORTED
    http_status = HTTPStatus.CONFLICT
    code = "aborted"


class UploadInProgress(Aborted):
    """Another upload from the same agent for the same round is still streaming."""

    code = "upload_in_progress"


class ResumeRefused(Aborted):
    """An upload asked to resume from an offset this aggregator does not hold for it: the
    agent asks UploadStatus where to resume and tries again."""

    code = "resume_refused"


class ResourceExhausted(FedstreamError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = HTTPStatus.INSUFFICIENT_STORAGE
    code = "resource_exhausted"


class Unavailable(FedstreamError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "unavailable"


class StreamIdle(FedstreamError):
    """A stream that sent nothing for longer than the server's idle limit."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = HTTPStatus.REQUEST_TIMEOUT
    code = "stream_idle"


class StreamEnded(FedstreamError):
    """A stream the server ended because what it fed is over (its round closed)."""

    grpc_code = grpc.StatusCode.CANCELLED
    http_status = HTTPStatus.GONE
    code = "stream_ended"


class BodyTooLarge(ResourceExhausted):
    """A request body over the size its API accepts (HTTP only)."""

    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "body_too_large"


class ReleaseNotFound(NotFound):
    code = "release_not_found"


class ChannelNotFound(NotFound):
    """A release channel that the federation's policy does not list."""

    code = "channel_not_found"


class RunRequestNotFound(NotFound):
    code = "run_request_not_found"


class ReleaseDecided(FailedPrecondition):
    """A release that is no longer proposed (released, rejected or superseded) is not changed."""

    code = "release_decided"


class AlreadyApproved(FailedPrecondition):
    """The same admin or site approves a release once."""

    code = "already_approved"


class MetricBelowThreshold(FailedPrecondition):
    """A version proposed for a channel that requires an evaluation metric it does not reach."""

    code = "metric_below_threshold"


class RequestsRefused(FailedPrecondition):
    """A federation whose policy refuses site-requested runs."""

    code = "site_requests_refused"


class RequestDecided(FailedPrecondition):
    """A run request that is no longer pending is not approved or denied again."""

    code = "request_decided"


class RateLimited(ResourceExhausted):
    """More requests than a per-site limit allows; the message says when one frees."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS
    code = "rate_limited"
