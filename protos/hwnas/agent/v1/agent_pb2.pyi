from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_STATUS_UNSPECIFIED: _ClassVar[MetricStatus]
    MEASURED: _ClassVar[MetricStatus]
    ESTIMATED: _ClassVar[MetricStatus]
    UNAVAILABLE: _ClassVar[MetricStatus]
    PUBLISHED: _ClassVar[MetricStatus]
    SIMULATED: _ClassVar[MetricStatus]
    COMPUTED: _ClassVar[MetricStatus]
METRIC_STATUS_UNSPECIFIED: MetricStatus
MEASURED: MetricStatus
ESTIMATED: MetricStatus
UNAVAILABLE: MetricStatus
PUBLISHED: MetricStatus
SIMULATED: MetricStatus
COMPUTED: MetricStatus

class BuildConfig(_message.Message):
    __slots__ = ("backend", "execution_provider", "precision", "intra_op_threads", "workspace_mb", "batch_min", "batch_opt", "batch_max", "calibration_sha256")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INTRA_OP_THREADS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_MB_FIELD_NUMBER: _ClassVar[int]
    BATCH_MIN_FIELD_NUMBER: _ClassVar[int]
    BATCH_OPT_FIELD_NUMBER: _ClassVar[int]
    BATCH_MAX_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SHA256_FIELD_NUMBER: _ClassVar[int]
    backend: str
    execution_provider: str
    precision: str
    intra_op_threads: int
    workspace_mb: int
    batch_min: int
    batch_opt: int
    batch_max: int
    calibration_sha256: str
    def __init__(self, backend: _Optional[str] = ..., execution_provider: _Optional[str] = ..., precision: _Optional[str] = ..., intra_op_threads: _Optional[int] = ..., workspace_mb: _Optional[int] = ..., batch_min: _Optional[int] = ..., batch_opt: _Optional[int] = ..., batch_max: _Optional[int] = ..., calibration_sha256: _Optional[str] = ...) -> None: ...

class MeasureConfig(_message.Message):
    __slots__ = ("warmup_s", "min_iterations", "min_duration_s", "max_duration_s", "target_precision", "cv_threshold", "batch_size", "seed", "check_outputs", "profile_layers", "energy", "end_to_end", "timeout_s", "memory_limit_mb")
    WARMUP_S_FIELD_NUMBER: _ClassVar[int]
    MIN_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TARGET_PRECISION_FIELD_NUMBER: _ClassVar[int]
    CV_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHECK_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    END_TO_END_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_MB_FIELD_NUMBER: _ClassVar[int]
    warmup_s: float
    min_iterations: int
    min_duration_s: float
    max_duration_s: float
    target_precision: float
    cv_threshold: float
    batch_size: int
    seed: int
    check_outputs: bool
    profile_layers: bool
    energy: bool
    end_to_end: bool
    timeout_s: float
    memory_limit_mb: int
    def __init__(self, warmup_s: _Optional[float] = ..., min_iterations: _Optional[int] = ..., min_duration_s: _Optional[float] = ..., max_duration_s: _Optional[float] = ..., target_precision: _Optional[float] = ..., cv_threshold: _Optional[float] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., check_outputs: _Optional[bool] = ..., profile_layers: _Optional[bool] = ..., energy: _Optional[bool] = ..., end_to_end: _Optional[bool] = ..., timeout_s: _Optional[float] = ..., memory_limit_mb: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentLimits(_message.Message):
    __slots__ = ("max_model_bytes", "max_chunk_bytes", "queue_size", "queue_depth")
    MAX_MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    max_model_bytes: int
    max_chunk_bytes: int
    queue_size: int
    queue_depth: int
    def __init__(self, max_model_bytes: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., queue_size: _Optional[int] = ..., queue_depth: _Optional[int] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("device_key", "protocol", "agent_version", "backends", "sensors", "versions", "limits", "details_json")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_KEY_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    device_key: str
    protocol: str
    agent_version: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    sensors: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.ScalarMap[str, str]
    limits: AgentLimits
    details_json: str
    def __init__(self, device_key: _Optional[str] = ..., protocol: _Optional[str] = ..., agent_version: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ..., sensors: _Optional[_Iterable[str]] = ..., versions: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[AgentLimits, _Mapping]] = ..., details_json: _Optional[str] = ...) -> None: ...

class HasModelRequest(_message.Message):
    __slots__ = ("model_sha256",)
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    def __init__(self, model_sha256: _Optional[str] = ...) -> None: ...

class HasModelReply(_message.Message):
    __slots__ = ("held", "size")
    HELD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    held: bool
    size: int
    def __init__(self, held: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("model_sha256", "model_size")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    model_size: int
    def __init__(self, model_sha256: _Optional[str] = ..., model_size: _Optional[int] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("model_sha256", "bytes_received", "already_held")
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_HELD_FIELD_NUMBER: _ClassVar[int]
    model_sha256: str
    bytes_received: int
    already_held: bool
    def __init__(self, model_sha256: _Optional[str] = ..., bytes_received: _Optional[int] = ..., already_held: _Optional[bool] = ...) -> None: ...

class MeasureHeader(_message.Message):
    __slots__ = ("job_id", "model_sha256", "model_size", "arch_key", "space", "build", "measure")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARCH_KEY_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_sha256: str
    model_size: int
    arch_key: str
    space: str
    build: BuildConfig
    measure: MeasureConfig
    def __init__(self, job_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., model_size: _Optional[int] = ..., arch_key: _Optional[str] = ..., space: _Optional[str] = ..., build: _Optional[_Union[BuildConfig, _Mapping]] = ..., measure: _Optional[_Union[MeasureConfig, _Mapping]] = ...) -> None: ...

class MeasureRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: MeasureHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[MeasureHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("median", "mean", "min", "max", "p90", "p95", "p99", "std", "cv", "count", "ci_low", "ci_high", "ci_level", "method", "status")
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CV_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    CI_LEVEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    median: float
    mean: float
    min: float
    max: float
    p90: float
    p95: float
    p99: float
    std: float
    cv: float
    count: int
    ci_low: float
    ci_high: float
    ci_level: float
    method: str
    status: MetricStatus
    def __init__(self, median: _Optional[float] = ..., mean: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., p90: _Optional[float] = ..., p95: _Optional[float] = ..., p99: _Optional[float] = ..., std: _Optional[float] = ..., cv: _Optional[float] = ..., count: _Optional[int] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., ci_level: _Optional[float] = ..., method: _Optional[str] = ..., status: _Optional[_Union[MetricStatus, str]] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("value", "status", "method", "unit")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    value: float
    status: MetricStatus
    method: str
    unit: str
    def __init__(self, value: _Optional[float] = ..., status: _Optional[_Union[MetricStatus, str]] = ..., method: _Optional[str] = ..., unit: _Optional[str] = ...) -> None: ...

class Energy(_message.Message):
    __slots__ = ("status", "method", "value_mj", "net_value_mj", "avg_power_w", "idle_power_w", "window_s", "iterations", "rails")
    class RailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    VALUE_MJ_FIELD_NUMBER: _ClassVar[int]
    NET_VALUE_MJ_FIELD_NUMBER: _ClassVar[int]
    AVG_POWER_W_FIELD_NUMBER: _ClassVar[int]
    IDLE_POWER_W_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    RAILS_FIELD_NUMBER: _ClassVar[int]
    status: MetricStatus
    method: str
    value_mj: float
    net_value_mj: float
    avg_power_w: float
    idle_power_w: float
    window_s: float
    iterations: int
    rails: _containers.ScalarMap[str, float]
    def __init__(self, status: _Optional[_Union[MetricStatus, str]] = ..., method: _Optional[str] = ..., value_mj: _Optional[float] = ..., net_value_mj: _Optional[float] = ..., avg_power_w: _Optional[float] = ..., idle_power_w: _Optional[float] = ..., window_s: _Optional[float] = ..., iterations: _Optional[int] = ..., rails: _Optional[_Mapping[str, float]] = ...) -> None: ...

class MeasureReply(_message.Message):
    __slots__ = ("job_id", "device_key", "backend", "model_sha256", "error", "error_kind", "latency_ms", "peak_memory_mb", "energy", "flags", "output_check_json", "layers_json", "build_config_json", "measure_config_json", "provenance_json", "model_bytes_received", "device_peak_mb")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KEY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CHECK_JSON_FIELD_NUMBER: _ClassVar[int]
    LAYERS_JSON_FIELD_NUMBER: _ClassVar[int]
    BUILD_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    MEASURE_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_PEAK_MB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    device_key: str
    backend: str
    model_sha256: str
    error: str
    error_kind: str
    latency_ms: LatencyStats
    peak_memory_mb: Metric
    energy: Energy
    flags: _containers.RepeatedScalarFieldContainer[str]
    output_check_json: str
    layers_json: str
    build_config_json: str
    measure_config_json: str
    provenance_json: str
    model_bytes_received: int
    device_peak_mb: Metric
    def __init__(self, job_id: _Optional[str] = ..., device_key: _Optional[str] = ..., backend: _Optional[str] = ..., model_sha256: _Optional[str] = ..., error: _Optional[str] = ..., error_kind: _Optional[str] = ..., latency_ms: _Optional[_Union[LatencyStats, _Mapping]] = ..., peak_memory_mb: _Optional[_Union[Metric, _Mapping]] = ..., energy: _Optional[_Union[Energy, _Mapping]] = ..., flags: _Optional[_Iterable[str]] = ..., output_check_json: _Optional[str] = ..., layers_json: _Optional[str] = ..., build_config_json: _Optional[str] = ..., measure_config_json: _Optional[str] = ..., provenance_json: _Optional[str] = ..., model_bytes_received: _Optional[int] = ..., device_peak_mb: _Optional[_Union[Metric, _Mapping]] = ...) -> None: ...

class BuildEngineRequest(_message.Message):
    __slots__ = ("job_id", "model_sha256", "build", "timeout_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_sha256: str
    build: BuildConfig
    timeout_s: float
    def __init__(self, job_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., build: _Optional[_Union[BuildConfig, _Mapping]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class ArtifactHeader(_message.Message):
    __slots__ = ("size", "sha256", "backend", "cache_key", "from_cache", "provenance_json", "error", "error_kind")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: str
    backend: str
    cache_key: str
    from_cache: bool
    provenance_json: str
    error: str
    error_kind: str
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[str] = ..., backend: _Optional[str] = ..., cache_key: _Optional[str] = ..., from_cache: _Optional[bool] = ..., provenance_json: _Optional[str] = ..., error: _Optional[str] = ..., error_kind: _Optional[str] = ...) -> None: ...

class BuildEngineReply(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ArtifactHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ArtifactHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
