"""YAML configs validated into typed objects; a wrong key, or a key given twice, is a one-line error
naming it; ``~`` and environment variables in config paths are expanded (:mod:`pipeline.paths`)."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from ..models.registry import MODELS
from .errors import ConfigError
from .paths import expand_path, expand_spec

PATH_KEYS = {  # config keys that name files or folders (expand_path) or sources (expand_spec)
    "model": {"backbone_weights": expand_path, "stage1_checkpoint": expand_path},
    "train": {"data": expand_spec, "calibration_data": expand_spec, "anomalies": expand_spec,
              "output_dir": expand_path, "init_checkpoint": expand_path},
}


DEVICE_FORMS = "auto, cpu, cuda, cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: str, option: str = "--device") -> str:
    """``name`` when it is one of :data:`DEVICE_FORMS` (``auto``: CUDA when torch sees one); else
    ConfigError ``--device gpu: one of auto, cpu, cuda, cuda:N`` naming ``option``. Only the form:
    whether the device exists is :func:`pipeline.checkpoint.choose_device`'s question."""
    if not _DEVICE.fullmatch(name):
        raise ConfigError(f"{option} {name}: one of {DEVICE_FORMS}")
    return name


def _device_field(name: str) -> str:
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"one of {DEVICE_FORMS}, got {name!r}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class ModelSection(_Strict):
    name: str
    params: Any = None  # the model's own hyper-parameter dataclass, validated by name

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
        return name


class TrainSection(_Strict):
    data: str | list[str] = Field(description="training source(s): frame folders / videos / images / dataset specs "
                                              "(mtd:, mvtec:, mvtec_loco:, ksdd2:)")
    epochs: int = Field(10, ge=1)
    windows_per_epoch: int | None = Field(None, ge=1, description="draw this many training windows per epoch "
                                          "(anomstream fit's time budget); default: every window once")
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up from ~0 over these epochs, then the cosine")
    gradient_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value each step")
    weight_decay: float = Field(1e-2, ge=0)
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores")
    output_dir: str = "runs/train"
    log_every: int = Field(50, ge=1)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: mixed precision (autocast) for the forward pass and loss, weights and optimizer "
                            "in fp32; ~2x faster on CPUs with AVX512-BF16/AMX, slower on CPUs without")
    device: str = Field("auto", description="auto (CUDA when torch sees one), cpu, cuda or cuda:N (docs/gpu.md)")
    init_checkpoint: str | None = Field(None, description="start from this checkpoint's weights (same model), e.g. to fine-tune")
    augment: list[Literal["hflip"]] = Field(
        default_factory=list, description="hflip: each training window mirrored left-right with probability 1/2 "
                                          "(the whole window, so motion stays consistent)")
    anomalies: str | list[str] | None = Field(
        None, description="labelled anomalies to train on (models that learn from them): dataset specs with split=labelled")
    anomalies_per_batch: int = Field(2, ge=1, description="labelled anomalies drawn into each training step")
    calibrate: bool = Field(True, description="fit calibrated scores and a threshold after training (anomstream calibrate)")
    calibration_data: str | list[str] | None = Field(
        None, description="normal footage held out of training for the calibration (default: the training data, "
                          "which makes the threshold optimistic)")
    calibration_smoothing: int = Field(9, ge=1, description="trailing mean of this many frames (video models)")
    calibration_false_alarm_rate: float = Field(1e-3, gt=0, lt=1, description="the default threshold's rate on normal data")
    calibration_position_scale: bool = Field(
        False, description="reference terms divided by their per-position normal spread too (anomstream calibrate "
                           "--position-scale)")

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        return _device_field(name)


class ScoreSection(_Strict):
    batch_size: int = Field(16, ge=1, le=256, description="frames per replica call")
    replicas: int = Field(2, ge=1, description="model replicas; 2 one-thread replicas beat 1 two-thread one on 2 cores")
    in_flight_per_replica: int = Field(2, ge=1)
    flush_s: float = Field(1.0, ge=0, le=60, description="a live stream's rows wait in the writer's memory at most this "
                                                        "long before they are written (a recording's: 256 rows or its "
                                                        "end); 0: every stream's batches as they come (more CPU)")
    writers: int = Field(1, ge=1, description="writer processes, each writing whole streams of the store (many "
                                                "streams on many replicas: docs/cluster.md)")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs reserved per replica when no GPU")
    replica_threads: int | None = Field(None, ge=1, description="torch threads per CPU replica")
    gpu_fraction: float = Field(0.5, gt=0, le=1)
    backend: Literal["torch", "onnxruntime", "openvino", "auto"] = Field(
        "auto", description="what replicas score with: torch, or the model's exported graph in ONNX Runtime or "
                             "OpenVINO (CPU); auto: the fastest installed one that matches torch (docs/backends.md)")
    precision: Literal["auto", "fp32", "bf16", "int8", "int8-bf16"] = Field(
        "auto", description="auto: the fastest of int8-bf16 / int8 / bf16 that the checkpoint's measured verdict "
                            "clears and the CPU computes natively, else fp32; bf16: OpenVINO in bf16 where the CPU "
                            "has bf16 units, torch under autocast; int8: OpenVINO on the graph NNCF quantized, its "
                            "float parts in f32; int8-bf16: the same with the float parts in bf16 (CPUs with bf16 units; "
                            "docs/backends.md)")
    quantization_data: list[str] = Field(
        [], description="normal footage that int8 quantization collects its activation ranges on (default: the "
                        "footage the checkpoint's calibration was fitted on, where it is on this machine)")
    device: str = Field("auto", description="where replicas score: auto (a GPU fraction each when the cluster has "
                                            "GPUs), cpu (no GPU asked for), cuda (a GPU each, or the run refuses); "
                                            "docs/gpu.md")

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        return _device_field(name)


class AnomstreamConfig(_Strict):
    model: ModelSection
    train: TrainSection | None = None
    score: ScoreSection = ScoreSection()

    def model_params(self) -> Any:
        return self.model.params

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json")
        data["model"]["params"] = asdict(self.model.params)
        return data


def format_error(source: str, error: ValidationError, prefix: str = "", shown: int = 3) -> str:
    """One line: ``SOURCE: a.b: message; c: message`` for the first ``shown`` complaints, then how many more."""
    parts = []
    for complaint in error.errors()[:shown]:
        location = ".".join(str(part) for part in (prefix, *complaint["loc"]) if part != "")
        if complaint["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = "unknown key"
        elif complaint["type"] in ("model_type", "dataclass_type"):  # pydantic names our class here
            message = f"should be a mapping of keys, got {type(complaint['input']).__name__} {complaint['input']!r:.40}"
        else:  # without pydantic's "Value error, " before our own validators' messages
            message = complaint["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        parts.append(f"{location}: {message}" if location else message)
    more = f" (+{error.error_count() - shown} more)" if error.error_count() > shown else ""
    return f"{source}: {'; '.join(parts)}{more}"


def parse_config(data: Any, source: str = "config", expand: bool = True) -> AnomstreamConfig:
    """A validated config from parsed YAML ``data`` (``source``: its file, in messages); ``expand``:
    ``~`` and ``$VARIABLES`` in its paths expanded (:func:`_expand_paths`). Raises ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping with keys model, train, score")
    model = data.get("model")
    if isinstance(model, dict):
        model = dict(model)
        name = model.pop("name", None)
        data = {**data, "model": {"name": name, "params": None}}
        params_data = model
    else:
        params_data = {}
    try:
        config = AnomstreamConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_error(source, error)) from None
    _, params_class = MODELS[config.model.name]
    try:
        config.model.params = TypeAdapter(params_class).validate_python(params_data)
    except ValidationError as error:
        raise ConfigError(format_error(source, error, prefix="model")) from None
    if expand:
        _expand_paths(config, source)
    return config


def _expand_paths(config: AnomstreamConfig, source: str) -> None:
    """``~`` and ``$VARIABLES`` in the config's paths (:data:`PATH_KEYS`) expanded, once, in place.
    Raises ConfigError naming the file and key (``c.yaml: train.output_dir: environment variable
    RUNS is not set ...``)."""
    for section_name, keys in PATH_KEYS.items():
        section = config.model.params if section_name == "model" else getattr(config, section_name)
        for key, expand in keys.items():
            value, where = getattr(section, key, None), f"{source}: {section_name}.{key}"
            if isinstance(value, str):
                setattr(section, key, expand(value, where))
            elif isinstance(value, list):
                setattr(section, key, [expand(item, where) for item in value])


class DuplicateKeyError(yaml.YAMLError):
    """A mapping key given twice: ``key`` its dotted path (``score.replicas``), ``lines`` where."""

    def __init__(self, key: str, lines: tuple[int, int]) -> None:
        super().__init__(f"{key}: key given twice (lines {lines[0]} and {lines[1]})")
        self.key, self.lines = key, lines


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a mapping key given twice at any depth (PyYAML itself keeps
    the last one silently). Keys merged in with ``<<`` may be overridden, as YAML intends."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_keys(node, "", set())
        return super().construct_document(node)

    def _check_keys(self, node: yaml.Node, where: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_keys(item, f"{where}[{index}]", seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node)
                path = f"{where}.{key}" if where else str(key)
                if key_node.tag != "tag:yaml.org,2002:merge":
                    if (type(key), key) in first:
                        raise DuplicateKeyError(path, (first[type(key), key], key_node.start_mark.line + 1))
                    first[type(key), key] = key_node.start_mark.line + 1
                self._check_keys(value_node, path, seen)

    def _key(self, node: yaml.Node) -> Any:
        """A key as the document means it (``1`` and ``01`` are one int key); a key that is not a
        scalar (``? [a, b]``) by its position: never equal to another."""
        if not isinstance(node, yaml.ScalarNode):
            return f"<key at line {node.start_mark.line + 1}, column {node.start_mark.column + 1}>"
        try:
            key = self.construct_object(node)
            hash(key)
        except (yaml.YAMLError, TypeError):
            return node.value
        return key


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read ({getattr(error, 'strerror', None) or 'not UTF-8 text'})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except DuplicateKeyError as error:
        raise ConfigError(f"{path}: {error}; give it once (YAML would keep only the last)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = f" ({error.problem})" if getattr(error, "problem", None) else ""
        raise ConfigError(f"{path}:{where} invalid YAML{problem}") from None


def load_config(path: str | Path) -> AnomstreamConfig:
    """A whole config file (model, train, score). Raises ConfigError (one line naming the file and key)."""
    return parse_config(read_yaml(Path(path)), str(path))


def load_score_config(path: str | Path) -> tuple[ScoreSection, str | None]:
    """The ``score`` section of a config file and the model the file names, for ``score`` / ``live
    --config``: a file holding only a ``score`` section is enough (model None: any checkpoint).
    Raises ConfigError (one line naming the file and key)."""
    data = read_yaml(Path(path))
    if isinstance(data, dict) and not {"model", "train"} & set(data):  # a score config
        unknown = sorted(str(key) for key in data if key != "score")
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]}: unknown key (a score config holds a score section; "
                              f"a whole config: model, train, score)")
        try:
            return ScoreSection.model_validate(data.get("score") or {}), None
        except ValidationError as error:
            raise ConfigError(format_error(str(path), error, prefix="score")) from None
    config = parse_config(data, str(path), expand=False)  # scoring reads no train or model path
    return config.score, config.model.name


def with_overrides(section: _Strict, updates: dict[str, Any], options: dict[str, str]) -> Any:
    """A config section with command-line values (None = not given), validated as the YAML is.

    ``options`` names each key's command-line option for the error: ``{"epochs": "--epochs"}``.
    Raises ConfigError ``--epochs: Input should be greater than or equal to 1``.
    """
    given = {key: value for key, value in updates.items() if value is not None}
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        raise ConfigError(f"{options.get(key, key)}: {first['msg']} (got {given.get(key)!r})") from None
