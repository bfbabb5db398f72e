from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoundKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_KIND_UNSPECIFIED: _ClassVar[RoundKind]
    ROUND_KIND_INIT: _ClassVar[RoundKind]
    ROUND_KIND_TRAIN: _ClassVar[RoundKind]
    ROUND_KIND_EVALUATE: _ClassVar[RoundKind]

class RoundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STATE_UNSPECIFIED: _ClassVar[RoundState]
    ROUND_STATE_OPEN: _ClassVar[RoundState]
    ROUND_STATE_TRAINING: _ClassVar[RoundState]
    ROUND_STATE_AGGREGATING: _ClassVar[RoundState]
    ROUND_STATE_COMMITTED: _ClassVar[RoundState]
    ROUND_STATE_FAILED: _ClassVar[RoundState]
    ROUND_STATE_CANCELLED: _ClassVar[RoundState]
ROUND_KIND_UNSPECIFIED: RoundKind
ROUND_KIND_INIT: RoundKind
ROUND_KIND_TRAIN: RoundKind
ROUND_KIND_EVALUATE: RoundKind
ROUND_STATE_UNSPECIFIED: RoundState
ROUND_STATE_OPEN: RoundState
ROUND_STATE_TRAINING: RoundState
ROUND_STATE_AGGREGATING: RoundState
ROUND_STATE_COMMITTED: RoundState
ROUND_STATE_FAILED: RoundState
ROUND_STATE_CANCELLED: RoundState

class TrainingConfig(_message.Message):
    __slots__ = ("local_epochs", "batch_size", "learning_rate", "seed", "no_op", "proximal_mu", "shared_only", "compression", "upload_delta", "privacy", "secure_aggregation")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NO_OP_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    SHARED_ONLY_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_DELTA_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    no_op: bool
    proximal_mu: float
    shared_only: bool
    compression: str
    upload_delta: bool
    privacy: PrivacySpec
    secure_aggregation: SecureAggregationSpec
    def __init__(self, local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., seed: _Optional[int] = ..., no_op: _Optional[bool] = ..., proximal_mu: _Optional[float] = ..., shared_only: _Optional[bool] = ..., compression: _Optional[str] = ..., upload_delta: _Optional[bool] = ..., privacy: _Optional[_Union[PrivacySpec, _Mapping]] = ..., secure_aggregation: _Optional[_Union[SecureAggregationSpec, _Mapping]] = ...) -> None: ...

class StrategySpec(_message.Message):
    __slots__ = ("name", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdateReport(_message.Message):
    __slots__ = ("agent_id", "num_examples", "metrics", "bytes_received", "agent_version", "task_version", "data_fingerprint")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    bytes_received: int
    agent_version: str
    task_version: str
    data_fingerprint: str
    def __init__(self, agent_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., bytes_received: _Optional[int] = ..., agent_version: _Optional[str] = ..., task_version: _Optional[str] = ..., data_fingerprint: _Optional[str] = ...) -> None: ...

class StalenessSpec(_message.Message):
    __slots__ = ("function", "a", "b")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    function: str
    a: float
    b: float
    def __init__(self, function: _Optional[str] = ..., a: _Optional[float] = ..., b: _Optional[float] = ...) -> None: ...

class PrivacySpec(_message.Message):
    __slots__ = ("mode", "clip_norm", "noise_multiplier", "epsilon_budget", "delta")
    MODE_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    mode: str
    clip_norm: float
    noise_multiplier: float
    epsilon_budget: float
    delta: float
    def __init__(self, mode: _Optional[str] = ..., clip_norm: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., epsilon_budget: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class SecureAggregationSpec(_message.Message):
    __slots__ = ("max_dropout", "clip_range", "step_timeout_s")
    MAX_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    STEP_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    max_dropout: float
    clip_range: float
    step_timeout_s: float
    def __init__(self, max_dropout: _Optional[float] = ..., clip_range: _Optional[float] = ..., step_timeout_s: _Optional[float] = ...) -> None: ...

class AsynchronousSpec(_message.Message):
    __slots__ = ("buffer_size", "concurrency", "staleness", "max_staleness")
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    buffer_size: int
    concurrency: int
    staleness: StalenessSpec
    max_staleness: int
    def __init__(self, buffer_size: _Optional[int] = ..., concurrency: _Optional[int] = ..., staleness: _Optional[_Union[StalenessSpec, _Mapping]] = ..., max_staleness: _Optional[int] = ...) -> None: ...
