from fedstream.v1 import round_pb2 as _round_pb2
from fedstream.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DownloadModelRequest(_message.Message):
    __slots__ = ("run_id", "version", "chunk_bytes", "offset")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version: str
    chunk_bytes: int
    offset: int
    def __init__(self, run_id: _Optional[str] = ..., version: _Optional[str] = ..., chunk_bytes: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("version", "layout", "metadata", "offset")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    version: str
    layout: _tensor_pb2.Layout
    metadata: _containers.ScalarMap[str, str]
    offset: int
    def __init__(self, version: _Optional[str] = ..., layout: _Optional[_Union[_tensor_pb2.Layout, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadModelResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    chunk: _tensor_pb2.Chunk
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ...) -> None: ...

class UploadStatusRequest(_message.Message):
    __slots__ = ("run_id", "round", "agent_id", "upload_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    agent_id: str
    upload_id: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., agent_id: _Optional[str] = ..., upload_id: _Optional[str] = ...) -> None: ...

class UploadStatusResponse(_message.Message):
    __slots__ = ("counted", "offset")
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    counted: bool
    offset: int
    def __init__(self, counted: _Optional[bool] = ..., offset: _Optional[int] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("run_id", "round", "agent_id", "layout", "num_examples", "metrics", "upload_id", "resume_offset", "agent_version", "task_version", "data_fingerprint")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    agent_id: str
    layout: _tensor_pb2.Layout
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    upload_id: str
    resume_offset: int
    agent_version: str
    task_version: str
    data_fingerprint: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., agent_id: _Optional[str] = ..., layout: _Optional[_Union[_tensor_pb2.Layout, _Mapping]] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., upload_id: _Optional[str] = ..., resume_offset: _Optional[int] = ..., agent_version: _Optional[str] = ..., task_version: _Optional[str] = ..., data_fingerprint: _Optional[str] = ...) -> None: ...

class UploadUpdateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: _tensor_pb2.Chunk
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ...) -> None: ...

class UploadUpdateResponse(_message.Message):
    __slots__ = ("duplicate", "bytes_received")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    bytes_received: int
    def __init__(self, duplicate: _Optional[bool] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class AbortRoundRequest(_message.Message):
    __slots__ = ("run_id", "round", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class AbortRoundResponse(_message.Message):
    __slots__ = ("state", "version", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: _round_pb2.RoundState
    version: str
    reason: str
    def __init__(self, state: _Optional[_Union[_round_pb2.RoundState, str]] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RoundPlan(_message.Message):
    __slots__ = ("run_id", "round", "kind", "base_version", "participants", "min_updates", "deadline_unix", "strategy", "compression", "partial", "task", "distill", "target_updates", "buffer", "lineage_context", "privacy", "secure_aggregation")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MIN_UPDATES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DISTILL_FIELD_NUMBER: _ClassVar[int]
    TARGET_UPDATES_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    kind: _round_pb2.RoundKind
    base_version: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    min_updates: int
    deadline_unix: float
    strategy: _round_pb2.StrategySpec
    compression: str
    partial: bool
    task: str
    distill: bool
    target_updates: int
    buffer: _round_pb2.AsynchronousSpec
    lineage_context: str
    privacy: _round_pb2.PrivacySpec
    secure_aggregation: _round_pb2.SecureAggregationSpec
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[_round_pb2.RoundKind, str]] = ..., base_version: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., min_updates: _Optional[int] = ..., deadline_unix: _Optional[float] = ..., strategy: _Optional[_Union[_round_pb2.StrategySpec, _Mapping]] = ..., compression: _Optional[str] = ..., partial: _Optional[bool] = ..., task: _Optional[str] = ..., distill: _Optional[bool] = ..., target_updates: _Optional[int] = ..., buffer: _Optional[_Union[_round_pb2.AsynchronousSpec, _Mapping]] = ..., lineage_context: _Optional[str] = ..., privacy: _Optional[_Union[_round_pb2.PrivacySpec, _Mapping]] = ..., secure_aggregation: _Optional[_Union[_round_pb2.SecureAggregationSpec, _Mapping]] = ...) -> None: ...

class OpenRoundResponse(_message.Message):
    __slots__ = ("endpoints",)
    class EndpointsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.ScalarMap[str, str]
    def __init__(self, endpoints: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CollectPartialRequest(_message.Message):
    __slots__ = ("run_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class PartialHeader(_message.Message):
    __slots__ = ("layout", "total_weight", "reports", "continued")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_FIELD_NUMBER: _ClassVar[int]
    layout: _tensor_pb2.Layout
    total_weight: float
    reports: _containers.RepeatedCompositeFieldContainer[_round_pb2.UpdateReport]
    continued: bool
    def __init__(self, layout: _Optional[_Union[_tensor_pb2.Layout, _Mapping]] = ..., total_weight: _Optional[float] = ..., reports: _Optional[_Iterable[_Union[_round_pb2.UpdateReport, _Mapping]]] = ..., continued: _Optional[bool] = ...) -> None: ...

class CollectPartialResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PartialHeader
    chunk: _tensor_pb2.Chunk
    def __init__(self, header: _Optional[_Union[PartialHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ...) -> None: ...

class FinishPartialRequest(_message.Message):
    __slots__ = ("run_id", "round", "version", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    version: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FinishPartialResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRoundRequest(_message.Message):
    __slots__ = ("run_id", "round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class RoundEvent(_message.Message):
    __slots__ = ("run_id", "round", "state", "reports", "stragglers", "version", "reason", "metrics", "continued")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONTINUED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    state: _round_pb2.RoundState
    reports: _containers.RepeatedCompositeFieldContainer[_round_pb2.UpdateReport]
    stragglers: _containers.RepeatedScalarFieldContainer[str]
    version: str
    reason: str
    metrics: _containers.ScalarMap[str, float]
    continued: bool
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., state: _Optional[_Union[_round_pb2.RoundState, str]] = ..., reports: _Optional[_Iterable[_Union[_round_pb2.UpdateReport, _Mapping]]] = ..., stragglers: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., continued: _Optional[bool] = ...) -> None: ...
