"""Which backend and precision a run's replicas score with, decided once by the driver: the
exported graph is made (or read from the user's cache; int8: quantized by NNCF on normal footage),
checked against torch, and handed to every replica through Ray's object store with the checkpoint.

``auto`` backend: the fastest installed backend that passes the check (measured on these 2-core
CPUs, docs/backends.md: in fp32 ONNX Runtime, as fast as OpenVINO and quicker to load; in bf16 and
int8 OpenVINO), torch when the replicas are on a GPU, when nothing else is installed, or when the
graph cannot be exported. ``auto`` precision: the fastest of int8-bf16 (int8 convolutions, the float
parts in bf16: CPUs with AVX512-BF16 or AMX), int8 and bf16 that the checkpoint's measured verdict clears
(:mod:`pipeline.backends.verdict`: its AUC, and where the verdict measured speeds, faster than the
fp32 runtime the run would take instead) and the CPU computes natively, else fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...models.base import AnomalyModel
from ..errors import AnomstreamError, first_line
from ..paths import user_cache
from .graph import ONNX_OPSET, ExportError, example_windows, export_onnx, makes_discrete_choices
from .quantize import QUANTIZE_RECIPE, quantize_int8
from .runners import BACKENDS, BackendError, CheckRefusal, installed_backends, make_runner
from .verdict import QUANTIZED, cpu_refusal, measured_verdict

PRECISIONS = ("auto", "fp32", "bf16", "int8", "int8-bf16")
# fastest first (docs/backends.md): int8 with its float parts in bf16 > int8 > bf16 > fp32 windows/s (with AMX bf16 ~
# int8); int8-bf16 and bf16 need bf16 units, int8 VNNI (verdict.cpu_refusal)
REDUCED = ("int8-bf16", "int8", "bf16")
# largest |backend - torch| allowed at the fp32 check, relative to the largest |torch| value of each
# output (measured on real frames, docs/backends.md: at most 5e-5)
TOLERANCE = {"fp32": 1e-4}
# or, for the map alone of a graph that makes discrete choices, three quarters of its pixels within it and this
# correlation with torch's (a flipped codeword: DSR trained on MTD, ONNX Runtime on noise windows: largest 0.037,
# 13 % of the pixels beyond 1e-4, correlation 0.99999; image AUROC on MTD -0.0002)
FP32_MAP_CORRELATION = 0.999
FP32_MAP_QUANTILE = 0.75
# bf16 / int8: the least rank agreement (Spearman) with torch fp32 of the score and of every term the
# calibration uses, over windows of normal footage (measured on the shipped Ped2 DMAD: bf16 0.9996,
# int8 0.991-0.997 on the score; a broken runtime or graph falls far below)
RANK_AGREEMENT = 0.98
# and the anomaly map: Pearson's correlation with torch fp32's maps over the same windows' pixels (the
# map's values, not their ranks: the order of a normal map's near-zero pixels is noise; measured on the
# shipped Ped2 DMAD, int8: 0.990 on normal windows, Spearman there 0.90; a broken map falls far below)
MAP_CORRELATION = 0.95
CHECK_WINDOWS = 24
# what an error about the calibration's footage adds (its specs as given where it was fitted)
CALIBRATION_FOOTAGE_HINT = ("(a path from the folder the checkpoint was calibrated in: run from there, or give "
                            "--quantization-data)")
QUANTIZATION_WINDOWS = 192  # NNCF's statistics: ~8 s of NNCF on the shipped Ped2 DMAD, 2 cores


@dataclass(frozen=True)
class BackendChoice:
    """What replicas score with: ``backend`` (``torch``, ``onnxruntime``, ``openvino``), its
    ``precision`` (``fp32``, ``bf16``, ``int8``, ``int8-bf16``) and, for the runtimes, the ``graph`` (ONNX,
    or the quantized OpenVINO model for the int8 precisions); ``note``: why ``auto`` chose it. ``required``: asked for by
    name, so a replica that cannot load it fails (``auto``: it scores with torch instead and says so)."""

    backend: str = "torch"
    precision: str = "fp32"
    graph: bytes | None = None
    note: str | None = None
    required: bool = False


def choose_backend(requested: str, precision: str, cache: GraphCache, on_gpu: bool = False) -> BackendChoice:
    """The backend for ``requested`` (one of ``BACKENDS`` or ``auto``) in ``precision`` (one of
    ``PRECISIONS``) for the model behind ``cache``. ``auto`` precision: the fastest reduced
    precision that a measured verdict clears for this checkpoint (:mod:`pipeline.backends.verdict`:
    the test set's AUC within 0.002 of fp32's and the same events), that this CPU computes natively and
    that passes the start-of-run check; else fp32. Raises BackendError / ExportError (one line) for
    an explicit backend or precision that is not installed, cannot export the model or fails the
    check; ``auto`` falls back instead (``note`` says why)."""
    _check_names(requested, precision)
    if precision == "auto":
        return _auto_precision(requested, cache, on_gpu)
    if requested == "torch":
        return BackendChoice("torch", precision)
    if requested != "auto":
        return replace(_checked(requested, precision, cache), required=True)
    fallback = "fp32" if precision in QUANTIZED else precision  # torch has no int8
    if on_gpu:
        return BackendChoice("torch", fallback, note="replicas on a GPU")
    installed = installed_backends()
    order = ["openvino"] if precision != "fp32" else ["onnxruntime", "openvino"]  # fp32: as fast, loads in 0.1 s
    candidates = [name for name in order if name in installed]
    if not candidates:
        return BackendChoice("torch", fallback, note=f"{' and '.join(order)}: not installed")
    failures = []
    for name in candidates:
        try:
            return _checked(name, precision, cache)
        except ExportError as error:
            return BackendChoice("torch", fallback, note=str(error))
        except AnomstreamError as error:
            failures.append(str(error))
    return BackendChoice("torch", fallback, note="; ".join(failures))


def _check_names(requested: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise BackendError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if requested not in (*BACKENDS, "auto"):
        raise BackendError(f"--backend: unknown backend {requested!r}; one of {', '.join(BACKENDS)}, auto")
    if requested == "onnxruntime" and precision not in ("fp32", "auto"):
        raise BackendError("--backend onnxruntime computes in fp32 only (--precision fp32)")
    if requested == "torch" and precision in QUANTIZED:
        raise BackendError(f"--precision {precision} runs in OpenVINO (--backend openvino or auto)")


def _auto_precision(requested: str, cache: GraphCache, on_gpu: bool) -> BackendChoice:
    """``--precision auto``: see :func:`choose_backend`."""
    reasons, fallback, no_fallback = [], None, False
    if requested == "torch" or on_gpu and requested == "auto":
        return BackendChoice("torch", "fp32", note="replicas on a GPU" if on_gpu and requested != "torch" else None)
    if requested in ("auto", "openvino") and "openvino" in installed_backends():
        verdict = measured_verdict(cache.sha256)
        for precision in REDUCED:
            why_not = verdict.refusal(precision) or cpu_refusal(precision) or cache.footage_refusal(precision)
            if not why_not and verdict.fps and not no_fallback:  # its speed against the fp32 the run would take instead
                try:
                    fallback = fallback or choose_backend(requested, "fp32", cache)
                    why_not = verdict.slower(precision, fallback.backend)
                except AnomstreamError:  # --backend openvino whose fp32 fails its check: no fp32 to be slower than
                    no_fallback = True
            if why_not:
                reasons.append(f"{precision}: {why_not}")
                continue
            try:
                chosen = _checked("openvino", precision, cache)
                return replace(chosen, note="; ".join([verdict.summary(precision), *reasons]),
                               required=requested != "auto")
            except Exception as error:  # noqa: BLE001 - the graph, NNCF, the footage or the check: next precision
                reasons.append(f"{precision}: {first_line(error, None)}")  # the whole line: the store's note
    chosen = fallback or choose_backend(requested, "fp32", cache)
    return replace(chosen, note="; ".join(filter(None, [chosen.note, *reasons])) or None)


def _checked(backend: str, precision: str, cache: GraphCache) -> BackendChoice:
    """``backend`` on the cached graph after it passed the start-of-run check against torch fp32:
    fp32 within ``TOLERANCE`` of torch's outputs; bf16 / int8 ranking normal windows as torch does."""
    if precision in QUANTIZED and backend != "openvino":
        raise BackendError(f"--backend {backend}: --precision {precision} runs in OpenVINO (--backend openvino or auto)")
    if precision == "fp32":
        _check_fp32(backend, cache)
    else:
        agreement = cache.rank_agreement(backend, precision)
        least = {name: MAP_CORRELATION if name == "map_correlation" else RANK_AGREEMENT for name in agreement}
        worst = min(agreement, key=lambda name: np.nan_to_num(agreement[name] - least[name], nan=-np.inf))
        refused = f"--backend {backend} --precision {precision}: its"
        if np.isnan(agreement[worst]) and worst == "map_correlation":
            raise CheckRefusal(f"{refused} anomaly map is constant or not finite over normal windows (torch fp32's "
                               f"varies); use --precision fp32")
        if np.isnan(agreement[worst]):
            raise CheckRefusal(f"{refused} {worst} gives no ranking of normal windows (constant or not finite over "
                               f"them; torch fp32's varies); use --precision fp32")
        if worst == "map_correlation" and not agreement[worst] >= least[worst]:
            raise CheckRefusal(f"{refused} anomaly map follows torch fp32's poorly over normal windows (correlation "
                               f"{agreement[worst]:.3f}, at least {MAP_CORRELATION} needed); use --precision fp32")
        if not agreement[worst] >= least[worst]:
            raise CheckRefusal(f"{refused} {worst} ranks normal windows unlike torch fp32 (rank agreement "
                               f"{agreement[worst]:.3f}, at least {RANK_AGREEMENT} needed); use --precision fp32")
    return BackendChoice(backend, precision, cache.graph(precision))


def _check_fp32(backend: str, cache: GraphCache) -> None:
    """CheckRefusal unless ``backend``'s fp32 outputs are torch's: each within ``TOLERANCE`` of its
    range; in a graph that makes discrete choices (``makes_discrete_choices``: DSR's codeword between
    two near-equal distances flips with the order of a sum, and another reconstruction follows over
    a region of one window) the map may instead differ over a region: ``FP32_MAP_QUANTILE`` of its
    pixels within the tolerance and the whole following torch's (``FP32_MAP_CORRELATION``)."""
    tolerance, measured = TOLERANCE["fp32"], dict(cache.parity(backend, "fp32"))
    quantile, correlation = measured.pop("map_quantile", np.nan), measured.pop("map_correlation", np.nan)
    discrete = bool(measured.pop("discrete_choices", 0.0))
    beyond = {name: value for name, value in measured.items() if not value <= tolerance}  # NaN too
    if set(beyond) == {"map"} and discrete:
        if quantile <= tolerance and correlation >= FP32_MAP_CORRELATION:
            return
        raise CheckRefusal(f"--backend {backend}: its map differs from torch's by {beyond['map']:.2g} of its range, "
                           f"{FP32_MAP_QUANTILE:.0%} of its pixels within {quantile:.2g}, correlation {correlation:.4f} "
                           f"(allowed {tolerance:g}, or {FP32_MAP_QUANTILE:.0%} of the pixels within it and a "
                           f"correlation of {FP32_MAP_CORRELATION}); use --backend torch")
    if beyond:
        worst = max(beyond, key=lambda name: np.nan_to_num(beyond[name], nan=np.inf))
        raise CheckRefusal(f"--backend {backend}: its {worst} differs from torch's by {beyond[worst]:.2g} of its range "
                           f"(allowed {tolerance:g} in fp32); use --backend torch")


class GraphCache:
    """A checkpoint's exported graphs (ONNX; int8: quantized on ``footage``) and their checks against
    torch, kept in the user's cache folder (``$XDG_CACHE_HOME/anomstream/exports``, else
    ``~/.cache/...``): a run finds them there and builds no model.

    ``model``: the checkpoint's model with its weights and a calibration's ``reference`` maps, in
    eval mode, or a function that builds it (called only when something is not cached yet);
    ``footage``: normal footage specs (int8's statistics and the reduced-precision check's windows;
    default none: noise windows for the bf16 check, and no int8); ``footage_given``: named by the user
    (``--quantization-data``), else the footage the checkpoint's calibration was fitted on (its paths
    from the folder it was fitted in): what an error about it names."""

    def __init__(self, model: AnomalyModel | Callable[[], AnomalyModel] | None, checkpoint: str | Path, sha256: str,
                 reference: dict[str, np.ndarray] | None = None, footage: list[str] | None = None, *,
                 footage_given: bool = True) -> None:
        self._model, self.checkpoint, self.sha256, self.footage = model, Path(checkpoint), sha256, list(footage or [])
        self._footage_named = "--quantization-data" if footage_given else "the calibration's footage"
        digest = hashlib.sha256(_models_source())  # a change of the models' code makes a new graph
        for key in sorted(reference or {}):
            digest.update(key.encode() + np.ascontiguousarray(reference[key], np.float32).tobytes())
        self.name = f"{sha256[:20]}-{digest.hexdigest()[:8]}-opset{ONNX_OPSET}-torch{torch.__version__.split('+')[0]}"
        self._graphs: dict[str, bytes] = {}
        self._failed: dict[str, AnomstreamError] = {}  # a graph that could not be made: not tried again (auto's int8s)
        self._windows: np.ndarray | None = None

    @classmethod
    def for_run(cls, model: AnomalyModel | Callable[[], AnomalyModel], checkpoint: str | Path, sha256: str,
                calibrated: Any, quantization_data: list[str] | None) -> GraphCache:
        """The cache of a run's checkpoint with its calibration ``calibrated`` (None: uncalibrated):
        its reference maps, and int8's footage ``quantization_data`` (``--quantization-data``) or else
        the footage the calibration was fitted on."""
        reference = calibrated.reference if calibrated else None
        if quantization_data:
            return cls(model, checkpoint, sha256, reference, list(quantization_data), footage_given=True)
        return cls(model, checkpoint, sha256, reference, list(calibrated.footage) if calibrated else [],
                   footage_given=False)

    @cached_property
    def _int8_name(self) -> str:
        """``int8-<footage specs>-<their files' names and sizes>-<windows>-q<QUANTIZE_RECIPE>-nncf<version>``
        (after ``name``, which hashes the models' code): footage whose files changed, or a new rule in
        :func:`quantize_int8` of what stays float, gets a new graph; footage not on this machine, the
        newest graph made from the same specs (found once per cache: the footage is walked only when
        int8 is asked for)."""
        specs = hashlib.sha256("\n".join(self.footage).encode()).hexdigest()[:8]
        tail = f"{QUANTIZATION_WINDOWS}-q{QUANTIZE_RECIPE}-nncf{_runtime_version('nncf')}"
        files = footage_fingerprint(self.footage)
        if files is None:
            made = [path for folder in _cache_folders(self.checkpoint)
                    for path in folder.glob(f"{self.name}.int8-{specs}-*-{tail}.ir")]
            if made:
                return max(made, key=lambda path: path.stat().st_mtime).name[len(self.name) + 1:-len(".ir")]
            files = "absent"
        return f"int8-{specs}-{files}-{tail}"

    @property
    def model(self) -> AnomalyModel:
        if self._model is None:
            raise ValueError("no model to export")
        if not isinstance(self._model, AnomalyModel):
            self._model = self._model()
        return self._model

    def graph(self, precision: str = "fp32") -> bytes:
        """The model's ONNX graph, or for ``int8`` / ``int8-bf16`` its quantized OpenVINO model (made and
        cached on first use; ExportError if the model cannot be exported, BackendError if it cannot be quantized)."""
        kind = "int8" if precision in QUANTIZED else "onnx"
        if kind in self._failed:
            raise self._failed[kind]
        if kind not in self._graphs:
            suffix = f".{self._int8_name}.ir" if kind == "int8" else ".onnx"
            found = self._find(suffix)
            if found:
                self._graphs[kind] = found.read_bytes()
            else:
                try:
                    self._graphs[kind] = self._quantized() if kind == "int8" else export_onnx(self.model)
                except AnomstreamError as error:  # NNCF, the export, the footage: the same again
                    self._failed[kind] = error
                    raise
                self._store(suffix, self._graphs[kind])
        return self._graphs[kind]

    def footage_refusal(self, precision: str) -> str | None:
        """Why int8 cannot be had here (no normal footage named, or not on this machine, and no int8
        model made from it in the cache); else None."""
        if precision not in QUANTIZED or self.footage and self._find(f".{self._int8_name}.ir"):
            return None
        if not self.footage:
            return "no normal footage to quantize on (--quantization-data)"
        missing = missing_footage(self.footage)
        if not missing:
            return None
        if self._footage_named == "--quantization-data":
            return f"--quantization-data {missing[0]}: not on this machine"
        return f"{self._footage_named} {missing[0]} is not on this machine {CALIBRATION_FOOTAGE_HINT}"

    def parity(self, backend: str, precision: str) -> dict[str, float]:
        """:func:`parity` of ``backend`` in ``precision`` with ``map_detail`` (the runtime's version
        in the key), measured once."""
        return self._measured(f"{backend}-{_runtime_version(backend)}-{precision}-maps",
                              lambda: parity(backend, precision, self.model, self.graph(precision), map_detail=True))

    def rank_agreement(self, backend: str, precision: str) -> dict[str, float]:
        """:func:`rank_agreement` of ``backend`` in ``precision`` on ``CHECK_WINDOWS`` windows of the
        footage (noise windows when no footage is named or it is not here; int8 needs the footage, or
        its check already measured), measured once."""
        on_footage = bool(self.footage) and (precision in QUANTIZED or not missing_footage(self.footage))
        where = self._int8_name if on_footage else "noise"
        return self._measured(f"{backend}-{_runtime_version(backend)}-{precision}-ranks+map-{where}",
                              lambda: rank_agreement(backend, precision, self.model, self.graph(precision),
                                                     torch.from_numpy(self._footage_windows(on_footage)[1])))

    def _measured(self, key: str, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
        found = self._find(".parity.json")
        measured = json.loads(found.read_text()) if found else {}
        if key not in measured:
            measured[key] = measure()
            self._store(".parity.json", json.dumps(measured).encode())
        return measured[key]

    def _footage_windows(self, on_footage: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(windows to quantize on, windows to check on): disjoint, both spread over the footage
        (``on_footage`` False: none, and noise windows to check on)."""
        if not self.footage or not on_footage:
            return np.empty(0), example_windows(self.model, CHECK_WINDOWS, seed=2).numpy()
        if self._windows is None:
            from ..calibration.sample import sample_windows

            self._windows = sample_windows(self.model, self.footage, QUANTIZATION_WINDOWS + CHECK_WINDOWS,
                                           self._footage_named)  # not found from here: footage_refusal said so
        every = max(2, len(self._windows) // CHECK_WINDOWS)  # short footage: half of it to quantize on
        checked = np.zeros(len(self._windows), bool)
        checked[every // 2::every] = True
        return self._windows[~checked], self._windows[checked]

    def _quantized(self) -> bytes:
        refusal = self.footage_refusal("int8")
        if refusal:
            raise BackendError(f"--precision int8: {refusal}")
        windows = self._footage_windows()[0]
        batches = [windows[i:i + 16] for i in range(0, len(windows), 16)]
        return quantize_int8(self.graph("fp32"), batches, self.model.float_scopes())

    def _find(self, suffix: str) -> Path | None:
        return next((folder / (self.name + suffix) for folder in _cache_folders(self.checkpoint)
                     if (folder / (self.name + suffix)).is_file()), None)

    def _store(self, suffix: str, data: bytes) -> None:
        for folder in _cache_folders(self.checkpoint):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as part:
                    part.write(data)
                os.replace(part.name, folder / (self.name + suffix))  # another run never reads half a file
                return
            except OSError:
                continue


_PREFIXED = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:")  # rtsp://, s3://, camera:, linescan:, ped2: (not C:)


def footage_path(spec: str) -> Path | None:
    """The local file or folder a footage spec names, as the sources read it (the spec itself, else
    before its ``?``: a clip's cut; a still dataset spec such as ``mtd:ROOT?split=train``: its root),
    whether or not it is on this machine; None for a spec that names no local path (a camera, a
    remote store, another prefixed spec such as ``ped2:`` or ``linescan:``)."""
    from ..datasets.specs import is_dataset_spec, parse_dataset_spec

    for candidate in (spec, spec.split("?")[0]):
        if Path(candidate).exists():
            return Path(candidate)
    if is_dataset_spec(spec):
        try:
            return parse_dataset_spec(spec, check_root=False).root
        except AnomstreamError:  # a malformed spec: its reader says why
            return None
    return None if _PREFIXED.match(spec) else Path(spec.split("?")[0])


def missing_footage(specs: list[str]) -> list[str]:
    """Footage specs that name a path not on this machine (relative ones: from the working folder)."""
    return [spec for spec in specs if (path := footage_path(spec)) is not None and not path.exists()]


def check_quantization_data(specs: list[str] | None) -> None:
    """One-line AnomstreamError naming ``--quantization-data`` when a spec names a path not on this
    machine (checked before a run, not found after its other work)."""
    missing = missing_footage(list(specs or []))
    if missing:
        raise AnomstreamError(f"--quantization-data {missing[0]}: not found (normal footage: a video, a frame or "
                              f"image folder, or a dataset spec such as mtd:ROOT?split=train)")


def footage_fingerprint(specs: list[str]) -> str | None:
    """8 hex digits of the footage's file names and sizes (a folder: every file under it; a spec that
    names no local path: its name alone); None when a local one is not (or no longer) on this machine."""
    digest = hashlib.sha256()
    try:
        for spec in specs:
            digest.update(spec.encode() + b"\n")
            path = footage_path(spec)
            if path is None:
                continue
            if not path.exists():
                return None
            files = [path] if path.is_file() else sorted(file for file in path.rglob("*") if file.is_file())
            for file in files:
                name = file.relative_to(path) if file != path else file.name
                digest.update(f"{name}\t{file.stat().st_size}\n".encode())
    except OSError:  # a file removed while the folder was walked
        return None
    return digest.hexdigest()[:8]


def _runtime_version(backend: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(backend)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parity(backend: str, precision: str, model: AnomalyModel, graph: bytes, windows: torch.Tensor | None = None,
           threads: int | None = None, map_detail: bool = False) -> dict[str, float]:
    """Per output (``score``, ``map``, ``term_*``): the largest |backend - torch| over ``windows``
    (default: 4 noise windows), divided by the largest |torch| of that output; ``map_detail``: also
    ``map_quantile`` (``FP32_MAP_QUANTILE`` of the map's pixels differ by at most this, so divided),
    ``map_correlation`` (Pearson's, of the maps' pixels) and ``discrete_choices`` (1.0 when the graph
    makes them: :func:`makes_discrete_choices`)."""
    windows = example_windows(model, 4, seed=1) if windows is None else windows
    with torch.inference_mode():
        reference = model.score(windows)
    runner = make_runner(backend, graph, model.term_names, threads, precision,
                         images_per_call=model.images_per_graph_call())
    try:
        output = runner.score(windows)
        missing = set(model.term_names) - set(output.terms)
        if missing:
            raise ValueError(f"the graph lacks the terms {', '.join(sorted(missing))}")
    except Exception as error:  # noqa: BLE001 - the runtimes' own errors while scoring
        raise BackendError(f"--backend {backend}: scoring the exported graph failed ({first_line(error)})") from None
    pairs = {"score": (output.score, reference.score), "map": (output.anomaly_map, reference.anomaly_map),
             **{f"term_{name}": (output.terms[name], reference.terms[name]) for name in model.term_names}}
    measured = {name: float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))
                for name, (got, want) in pairs.items()}
    if map_detail:
        got, want = output.anomaly_map.float().numpy().ravel(), reference.anomaly_map.float().numpy().ravel()
        scale = max(float(np.abs(want).max()), 1e-12)
        measured["map_quantile"] = float(np.quantile(np.abs(got - want), FP32_MAP_QUANTILE) / scale)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant map: NaN, refused unless within tolerance
            measured["map_correlation"] = float(np.corrcoef(got, want)[0, 1])
        measured["discrete_choices"] = float(makes_discrete_choices(graph))
    return measured


def rank_agreement(backend: str, precision: str, model: AnomalyModel, graph: bytes,
                   windows: torch.Tensor) -> dict[str, float]:
    """Spearman's rank correlation with torch fp32 over ``windows`` of the score and of each term the
    model's calibration uses (``calibration_terms``, else ``term_weights``): 1.0 when the runtime
    orders the windows as torch does; and ``map_correlation``, Pearson's correlation of the anomaly
    maps' pixels (all windows pooled). NaN outputs give NaN."""
    from scipy.stats import ConstantInputWarning, spearmanr

    with torch.inference_mode():
        reference = model.score(windows)
    runner = make_runner(backend, graph, model.term_names, None, precision,
                         images_per_call=model.images_per_graph_call())
    try:
        output = runner.score(windows)
    except Exception as error:  # noqa: BLE001 - the runtimes' own errors while scoring
        raise BackendError(f"--backend {backend}: scoring the graph failed ({first_line(error)})") from None
    names = [name for name in (model.calibration_terms or model.term_weights) if name in output.terms]
    pairs = {"score": (output.score, reference.score),
             **{f"term_{name}": (output.terms[name], reference.terms[name]) for name in names}}
    agreement = {}
    for name, (got, want) in pairs.items():
        got, want = got.float().numpy(), want.float().numpy()
        with warnings.catch_warnings():  # a constant output: NaN, refused by the caller saying so
            warnings.simplefilter("ignore", ConstantInputWarning)
            agreement[name] = float(spearmanr(got, want)[0]) if np.isfinite(got).all() else float("nan")
    got, want = output.anomaly_map.float().numpy().ravel(), reference.anomaly_map.float().numpy().ravel()
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant map: NaN, as above
        agreement["map_correlation"] = float(np.corrcoef(got, want)[0, 1]) if np.isfinite(got).all() else float("nan")
    return agreement


def _models_source() -> bytes:
    from ... import models

    return b"".join(path.read_bytes() for path in sorted(Path(models.__file__).parent.glob("*.py")))


def _cache_folders(checkpoint: Path) -> list[Path]:
    """Where exported graphs are kept: the user's cache folder only. Nothing is written beside the
    checkpoint (it may sit in site-packages, a shared models folder or a read-only mount)."""
    return [user_cache() / "exports"]
