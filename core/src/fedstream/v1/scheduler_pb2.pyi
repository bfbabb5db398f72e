from fedstream.v1 import round_pb2 as _round_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState

class Capabilities(_message.Message):
    __slots__ = ("device", "gpu_name", "gpu_memory_bytes", "cpu_count", "memory_bytes", "free_disk_bytes", "agent_version", "torch_version")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    device: str
    gpu_name: str
    gpu_memory_bytes: int
    cpu_count: int
    memory_bytes: int
    free_disk_bytes: int
    agent_version: str
    torch_version: str
    def __init__(self, device: _Optional[str] = ..., gpu_name: _Optional[str] = ..., gpu_memory_bytes: _Optional[int] = ..., cpu_count: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., free_disk_bytes: _Optional[int] = ..., agent_version: _Optional[str] = ..., torch_version: _Optional[str] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "labels", "capabilities", "tasks")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    labels: _containers.ScalarMap[str, str]
    capabilities: Capabilities
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("token", "agent_id", "csr_pem")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    agent_id: str
    csr_pem: bytes
    def __init__(self, token: _Optional[str] = ..., agent_id: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewExpiredRequest(_message.Message):
    __slots__ = ("certificate_pem", "csr_pem")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    csr_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class AgentCertificate(_message.Message):
    __slots__ = ("agent_id", "certificate_pem", "ca_certificate_pem", "not_after_unix", "renew_after_unix")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    RENEW_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    not_after_unix: float
    renew_after_unix: float
    def __init__(self, agent_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., not_after_unix: _Optional[float] = ..., renew_after_unix: _Optional[float] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("agent", "protocol_version")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    protocol_version: int
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("heartbeat_interval_s", "protocol_version", "oldest_agent_protocol_version", "newest_agent_protocol_version", "aggregator_endpoint")
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_AGENT_PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEWEST_AGENT_PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    protocol_version: int
    oldest_agent_protocol_version: int
    newest_agent_protocol_version: int
    aggregator_endpoint: str
    def __init__(self, heartbeat_interval_s: _Optional[float] = ..., protocol_version: _Optional[int] = ..., oldest_agent_protocol_version: _Optional[int] = ..., newest_agent_protocol_version: _Optional[int] = ..., aggregator_endpoint: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "run_id", "round")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    round: int
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("round_cancelled", "reason", "round_closed")
    ROUND_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUND_CLOSED_FIELD_NUMBER: _ClassVar[int]
    round_cancelled: bool
    reason: str
    round_closed: bool
    def __init__(self, round_cancelled: _Optional[bool] = ..., reason: _Optional[str] = ..., round_closed: _Optional[bool] = ...) -> None: ...

class ReceiveAssignmentsRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("run_id", "round", "kind", "task", "base_version", "model_endpoint", "upload_endpoint", "training", "deadline_unix", "chunk_bytes", "participants")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    kind: _round_pb2.RoundKind
    task: str
    base_version: str
    model_endpoint: str
    upload_endpoint: str
    training: _round_pb2.TrainingConfig
    deadline_unix: float
    chunk_bytes: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[_round_pb2.RoundKind, str]] = ..., task: _Optional[str] = ..., base_version: _Optional[str] = ..., model_endpoint: _Optional[str] = ..., upload_endpoint: _Optional[str] = ..., training: _Optional[_Union[_round_pb2.TrainingConfig, _Mapping]] = ..., deadline_unix: _Optional[float] = ..., chunk_bytes: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentEvent(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: Assignment
    def __init__(self, assignment: _Optional[_Union[Assignment, _Mapping]] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("task", "rounds", "min_agents", "max_agents", "round_timeout_s", "min_updates", "training", "initial_version", "wait_for_agents_s", "strategy", "evaluate_every", "evaluate_only", "fraction", "target_updates", "selection", "asynchronous", "privacy", "secure_aggregation")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MIN_AGENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_AGENTS_FIELD_NUMBER: _ClassVar[int]
    ROUND_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MIN_UPDATES_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    INITIAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_AGENTS_S_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_EVERY_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_UPDATES_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    ASYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    task: str
    rounds: int
    min_agents: int
    max_agents: int
    round_timeout_s: float
    min_updates: int
    training: _round_pb2.TrainingConfig
    initial_version: str
    wait_for_agents_s: float
    strategy: _round_pb2.StrategySpec
    evaluate_every: int
    evaluate_only: bool
    fraction: float
    target_updates: int
    selection: SelectionSpec
    asynchronous: _round_pb2.AsynchronousSpec
    privacy: _round_pb2.PrivacySpec
    secure_aggregation: _round_pb2.SecureAggregationSpec
    def __init__(self, task: _Optional[str] = ..., rounds: _Optional[int] = ..., min_agents: _Optional[int] = ..., max_agents: _Optional[int] = ..., round_timeout_s: _Optional[float] = ..., min_updates: _Optional[int] = ..., training: _Optional[_Union[_round_pb2.TrainingConfig, _Mapping]] = ..., initial_version: _Optional[str] = ..., wait_for_agents_s: _Optional[float] = ..., strategy: _Optional[_Union[_round_pb2.StrategySpec, _Mapping]] = ..., evaluate_every: _Optional[int] = ..., evaluate_only: _Optional[bool] = ..., fraction: _Optional[float] = ..., target_updates: _Optional[int] = ..., selection: _Optional[_Union[SelectionSpec, _Mapping]] = ..., asynchronous: _Optional[_Union[_round_pb2.AsynchronousSpec, _Mapping]] = ..., privacy: _Optional[_Union[_round_pb2.PrivacySpec, _Mapping]] = ..., secure_aggregation: _Optional[_Union[_round_pb2.SecureAggregationSpec, _Mapping]] = ...) -> None: ...

class SelectionSpec(_message.Message):
    __slots__ = ("prefer_fast", "fairness_floor")
    PREFER_FAST_FIELD_NUMBER: _ClassVar[int]
    FAIRNESS_FLOOR_FIELD_NUMBER: _ClassVar[int]
    prefer_fast: bool
    fairness_floor: float
    def __init__(self, prefer_fast: _Optional[bool] = ..., fairness_floor: _Optional[float] = ...) -> None: ...

class RoundInfo(_message.Message):
    __slots__ = ("round", "kind", "state", "participants", "reports", "stragglers", "base_version", "version", "reason", "started_unix", "finished_unix", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    round: int
    kind: _round_pb2.RoundKind
    state: _round_pb2.RoundState
    participants: _containers.RepeatedScalarFieldContainer[str]
    reports: _containers.RepeatedCompositeFieldContainer[_round_pb2.UpdateReport]
    stragglers: _containers.RepeatedScalarFieldContainer[str]
    base_version: str
    version: str
    reason: str
    started_unix: float
    finished_unix: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, round: _Optional[int] = ..., kind: _Optional[_Union[_round_pb2.RoundKind, str]] = ..., state: _Optional[_Union[_round_pb2.RoundState, str]] = ..., participants: _Optional[_Iterable[str]] = ..., reports: _Optional[_Iterable[_Union[_round_pb2.UpdateReport, _Mapping]]] = ..., stragglers: _Optional[_Iterable[str]] = ..., base_version: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ..., started_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "spec", "state", "rounds", "reason", "latest_version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    spec: RunSpec
    state: RunState
    rounds: _containers.RepeatedCompositeFieldContainer[RoundInfo]
    reason: str
    latest_version: str
    def __init__(self, run_id: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., state: _Optional[_Union[RunState, str]] = ..., rounds: _Optional[_Iterable[_Union[RoundInfo, _Mapping]]] = ..., reason: _Optional[str] = ..., latest_version: _Optional[str] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("spec", "run_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    spec: RunSpec
    run_id: str
    def __init__(self, spec: _Optional[_Union[RunSpec, _Mapping]] = ..., run_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ApproveReleaseRequest(_message.Message):
    __slots__ = ("agent_id", "release_id")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    release_id: str
    def __init__(self, agent_id: _Optional[str] = ..., release_id: _Optional[str] = ...) -> None: ...

class ReleaseInfo(_message.Message):
    __slots__ = ("release_id", "federation", "channel", "version", "state", "admin_approvals", "site_approvals", "admins_needed", "sites_needed")
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADMIN_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    SITE_APPROVALS_FIELD_NUMBER: _ClassVar[int]
    ADMINS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    SITES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    release_id: str
    federation: str
    channel: str
    version: str
    state: str
    admin_approvals: int
    site_approvals: int
    admins_needed: int
    sites_needed: int
    def __init__(self, release_id: _Optional[str] = ..., federation: _Optional[str] = ..., channel: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., admin_approvals: _Optional[int] = ..., site_approvals: _Optional[int] = ..., admins_needed: _Optional[int] = ..., sites_needed: _Optional[int] = ...) -> None: ...

class GetChannelRequest(_message.Message):
    __slots__ = ("agent_id", "federation", "channel")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    federation: str
    channel: str
    def __init__(self, agent_id: _Optional[str] = ..., federation: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class ChannelVersion(_message.Message):
    __slots__ = ("federation", "channel", "version", "release_id", "sha256", "aggregator_endpoint", "released_unix")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RELEASED_UNIX_FIELD_NUMBER: _ClassVar[int]
    federation: str
    channel: str
    version: str
    release_id: str
    sha256: str
    aggregator_endpoint: str
    released_unix: float
    def __init__(self, federation: _Optional[str] = ..., channel: _Optional[str] = ..., version: _Optional[str] = ..., release_id: _Optional[str] = ..., sha256: _Optional[str] = ..., aggregator_endpoint: _Optional[str] = ..., released_unix: _Optional[float] = ...) -> None: ...

class RequestRunRequest(_message.Message):
    __slots__ = ("agent_id", "federation", "reason")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    federation: str
    reason: str
    def __init__(self, agent_id: _Optional[str] = ..., federation: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RunRequestInfo(_message.Message):
    __slots__ = ("request_id", "federation", "state", "run_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    federation: str
    state: str
    run_id: str
    def __init__(self, request_id: _Optional[str] = ..., federation: _Optional[str] = ..., state: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...
