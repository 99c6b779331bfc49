from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("collaborator", "federation_id", "plan_hash", "process")
    COLLABORATOR_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    collaborator: str
    federation_id: str
    plan_hash: str
    process: str
    def __init__(self, collaborator: _Optional[str] = ..., federation_id: _Optional[str] = ..., plan_hash: _Optional[str] = ..., process: _Optional[str] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("header", "probe")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    header: Header
    probe: bool
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., probe: _Optional[bool] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("aggregator", "federation_id", "plan_hash", "round", "rounds_to_train", "authorized", "message")
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TO_TRAIN_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    aggregator: str
    federation_id: str
    plan_hash: str
    round: int
    rounds_to_train: int
    authorized: bool
    message: str
    def __init__(self, aggregator: _Optional[str] = ..., federation_id: _Optional[str] = ..., plan_hash: _Optional[str] = ..., round: _Optional[int] = ..., rounds_to_train: _Optional[int] = ..., authorized: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class GetTasksRequest(_message.Message):
    __slots__ = ("header", "wait_ms")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    header: Header
    wait_ms: int
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class GetTasksResponse(_message.Message):
    __slots__ = ("round", "tasks", "quit", "final_validation", "last", "run")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    QUIT_FIELD_NUMBER: _ClassVar[int]
    FINAL_VALIDATION_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    round: int
    tasks: _containers.RepeatedScalarFieldContainer[str]
    quit: bool
    final_validation: bool
    last: bool
    run: str
    def __init__(self, round: _Optional[int] = ..., tasks: _Optional[_Iterable[str]] = ..., quit: _Optional[bool] = ..., final_validation: _Optional[bool] = ..., last: _Optional[bool] = ..., run: _Optional[str] = ...) -> None: ...

class GetTensorsRequest(_message.Message):
    __slots__ = ("header", "round", "names", "held")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    header: Header
    round: int
    names: _containers.RepeatedScalarFieldContainer[str]
    held: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., round: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., held: _Optional[_Iterable[str]] = ...) -> None: ...

class TensorHeader(_message.Message):
    __slots__ = ("name", "dtype", "shape", "payload_bytes", "encoding", "encoding_meta", "delta")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    ENCODING_META_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    payload_bytes: int
    encoding: str
    encoding_meta: bytes
    delta: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., payload_bytes: _Optional[int] = ..., encoding: _Optional[str] = ..., encoding_meta: _Optional[bytes] = ..., delta: _Optional[bool] = ...) -> None: ...

class TensorFrame(_message.Message):
    __slots__ = ("header", "data", "result", "model", "batch")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    header: TensorHeader
    data: bytes
    result: ResultHeader
    model: ModelInfo
    batch: bytes
    def __init__(self, header: _Optional[_Union[TensorHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., result: _Optional[_Union[ResultHeader, _Mapping]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., batch: _Optional[bytes] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("round", "plan_hash", "tensor_count", "kind", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    TENSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    round: int
    plan_hash: str
    tensor_count: int
    kind: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, round: _Optional[int] = ..., plan_hash: _Optional[str] = ..., tensor_count: _Optional[int] = ..., kind: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("header", "round", "task", "data_size", "metrics", "tensor_count", "run", "held", "result_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    header: Header
    round: int
    task: str
    data_size: int
    metrics: _containers.ScalarMap[str, float]
    tensor_count: int
    run: str
    held: _containers.RepeatedScalarFieldContainer[str]
    result_id: str
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., round: _Optional[int] = ..., task: _Optional[str] = ..., data_size: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., tensor_count: _Optional[int] = ..., run: _Optional[str] = ..., held: _Optional[_Iterable[str]] = ..., result_id: _Optional[str] = ...) -> None: ...

class ResultProgressRequest(_message.Message):
    __slots__ = ("header", "round", "task", "result_id")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESULT_ID_FIELD_NUMBER: _ClassVar[int]
    header: Header
    round: int
    task: str
    result_id: str
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., round: _Optional[int] = ..., task: _Optional[str] = ..., result_id: _Optional[str] = ...) -> None: ...

class ResultProgress(_message.Message):
    __slots__ = ("held", "held_bytes")
    HELD_FIELD_NUMBER: _ClassVar[int]
    HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    held: _containers.RepeatedScalarFieldContainer[str]
    held_bytes: int
    def __init__(self, held: _Optional[_Iterable[str]] = ..., held_bytes: _Optional[int] = ...) -> None: ...

class SubmitResultsResponse(_message.Message):
    __slots__ = ("accepted", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
