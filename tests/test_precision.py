"""Reduced-precision replicas (issue 34): int8 by NNCF on normal footage with only convolutions
quantized, what ``--precision auto`` picks from the measured verdict and the CPU's units, the
start-of-run rank check, and the accuracy comparison's event pairing."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from small_models import SMALL, still_windows

from anomstream.models.dmad import DMAD, DMADConfig
from anomstream.models.padim import PaDiM, PaDiMConfig
from anomstream.pipeline.backends import choice as choice_module
from anomstream.pipeline.backends import verdict as verdict_module
from anomstream.pipeline.backends.choice import (
    MAP_CORRELATION,
    RANK_AGREEMENT,
    GraphCache,
    choose_backend,
    footage_path,
)
from anomstream.pipeline.backends.graph import export_onnx
from anomstream.pipeline.backends.ir import is_ir, read_ir
from anomstream.pipeline.backends.quantize import map_filters, quantize_int8, quantized_share, scope_pattern
from anomstream.pipeline.backends.runners import make_runner
from anomstream.pipeline.backends.verdict import Verdict, measured_verdict
from anomstream.pipeline.calibration.stored import run_calibration
from anomstream.pipeline.checkpoint import model_from_payload, read_checkpoint_and_hash, set_reference_maps
from anomstream.pipeline.datasets.layouts import mtd_split
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.evaluation.backends import BackendAccuracy

openvino = pytest.importorskip("openvino")
pytest.importorskip("nncf")


def _shipped(checkpoint, ped2) -> GraphCache:
    """The shipped Ped2 DMAD with its calibration's reference map, normal footage: Ped2 training
    clip 01 (120 frames), graphs cached in ``$XDG_CACHE_HOME``."""
    payload, sha256 = read_checkpoint_and_hash(checkpoint)
    reference = run_calibration(payload, sha256, None).reference
    model = set_reference_maps(model_from_payload(payload, checkpoint), reference)
    return GraphCache(model, checkpoint, sha256, reference, [str(ped2 / "training" / "frames" / "01")])


@pytest.fixture(scope="session")
def made_graphs(shipped_checkpoint, ped2, tmp_path_factory):
    """The shipped DMAD's ONNX graph and its int8 model (NNCF on Ped2 training clip 01: ~15 s), made
    once for the session; the tests' own caches get copies (no measurements: those are each test's)."""
    folder = tmp_path_factory.mktemp("made_graphs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        _shipped(shipped_checkpoint, ped2).graph("int8")
    return folder / "anomstream" / "exports"


def _copy_graphs(made, cache_home, suffixes: tuple[str, ...]) -> None:
    exports = cache_home / "anomstream" / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    for path in made.iterdir():
        if path.name.endswith(suffixes):
            shutil.copy(path, exports / path.name)


@pytest.fixture
def shipped_cache(shipped_checkpoint, ped2, made_graphs, tmp_path, monkeypatch):
    """:func:`_shipped` with its graphs cached under ``tmp_path``: the ONNX graph already there, no
    int8 model yet (``int8_cache``: that too)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _copy_graphs(made_graphs, tmp_path / "cache", (".onnx",))
    return _shipped(shipped_checkpoint, ped2)


@pytest.fixture
def int8_cache(shipped_cache, made_graphs, tmp_path):
    """``shipped_cache`` with the session's int8 model in it (made by NNCF in ``made_graphs``)."""
    _copy_graphs(made_graphs, tmp_path / "cache", (".ir",))
    return shipped_cache


def test_int8_quantizes_the_convolutions_outside_the_deformation_and_ranks_windows_as_torch(int8_cache, tmp_path):
    """NNCF quantizes the 24 convolutions outside DMAD's deformation network (33 in all; its 9 make
    the sampling grids and stay float), the model travels as OpenVINO IR bytes, is cached, and
    orders Ped2 windows as torch fp32 does (measured: 0.991-0.997 on normal windows)."""
    chosen = choose_backend("openvino", "int8", int8_cache)
    assert (chosen.backend, chosen.precision, chosen.required) == ("openvino", "int8", True)
    assert is_ir(chosen.graph) and quantized_share(chosen.graph) == (24, 33)
    fed_by_quantizer = _fed_by_quantizer(chosen.graph)
    assert fed_by_quantizer and not any(name.startswith(("/deformation/", "/memory/")) for name in fed_by_quantizer)
    agreement = int8_cache.rank_agreement("openvino", "int8")
    assert set(agreement) == {"score", "term_gradient_excess", "term_deformation", "map_correlation"}
    assert agreement.pop("map_correlation") >= MAP_CORRELATION and min(agreement.values()) >= RANK_AGREEMENT, agreement
    measured = json.loads(next(p for p in (tmp_path / "cache" / "anomstream" / "exports").iterdir()
                               if p.name.endswith(".parity.json")).read_text())
    assert any("-int8-ranks+map-int8-" in key for key in measured)  # the check, measured once on the footage's windows


def _convolutions(graph: bytes) -> dict[str, bool]:
    """Each convolution of an int8 model by name: whether a quantizer feeds it."""
    model = read_ir(openvino.Core(), graph)
    return {op.get_friendly_name(): op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize"
            for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"}


def _fed_by_quantizer(graph: bytes) -> set[str]:
    return {name for name, quantized in _convolutions(graph).items() if quantized}


@pytest.mark.parametrize("name, filters", [("padim", {"/Conv", "/Conv_1"}), ("adtr", {"/Conv", "/Conv_1"}),
                                           ("favae", {"/Conv", "/Conv_1"}), ("ds2", {"/ConvTranspose"}),
                                           ("dsr", set())])
def test_the_convolutions_that_filter_a_score_map_are_found(name, filters):
    """One channel in, one out: the still models' Gaussian smoothing of the map (two 1-D passes) and
    DS2's fold of patch scores onto pixels; no network layer (DSR has none of the kind)."""
    model_class, config = SMALL[name]
    model = model_class(config).eval()
    if model.fits_statistics:
        model.fit_statistics([torch.randint(0, 256, (4, 1, 3, 64, 64), dtype=torch.uint8)])
    assert set(map_filters(openvino.convert_model(io.BytesIO(export_onnx(model))))) == filters


@pytest.mark.parametrize("name, scopes", [("padim", 2), ("adtr", 2), ("favae", 2), ("favae-crops", 2), ("dsr", 2),
                                          ("ds2", 0), ("ds2-cutpaste", 0), ("dmad", 2)])
def test_every_scope_a_model_keeps_in_float_names_operations_of_its_graph(name, scopes):
    """NNCF is given the scopes without checking them (a model without a backbone's scope is fine),
    so a scope named as the module tree has it but not as the graph does keeps nothing in float: DSR's
    ``discrete/quantise_lo`` did (its quantizers run through ``DiscreteModel.encode``, so the graph
    names them ``/quantise_lo/...``). Each scope must name operations of the exported graph."""
    model_class, config = (DMAD, DMADConfig(image_size=64, channels=1, widths=(8, 16, 32, 64), memory_size=32,
                                            skip_channels=8, offset_width=8)) if name == "dmad" else SMALL[name]
    model = model_class(config).eval()
    if model.fits_statistics:
        model.fit_statistics([torch.randint(0, 256, (4, 1, 3, 64, 64), dtype=torch.uint8)])
    names = [op.get_friendly_name() for op in openvino.convert_model(io.BytesIO(export_onnx(model))).get_ordered_ops()]
    found = {path: sum(bool(re.match(scope_pattern(path), name)) for name in names) for path in model.float_scopes()}
    assert len(found) == scopes and all(found.values()), found


def test_padims_int8_model_ranks_mtd_images_as_torch_does(shared_data):
    """PaDiM (EfficientNet-Lite0 features, 64 px, fitted on 32 normal MTD images and quantized on them):
    its int8 model ranks 24 test images (11 with defects) and draws their maps as torch fp32 does.
    Measured on this test's images: before, NNCF quantized the map's Gaussian smoothing too and clipped
    every value above the normal images' range, so every image got one score and one map (Spearman
    NaN); with the smoothing in float but the backbone's stem and first block quantized, Spearman 0.90
    and map correlation 0.94; now 0.99 and 0.99."""
    train, test = mtd_split(shared_data / "mtd")
    normal = still_windows([r.path for r in train[:32]], 64)
    windows = still_windows([r.path for r in test[::len(test) // 24][:24]], 64)
    model = PaDiM(PaDiMConfig(image_size=64)).eval()
    model.fit_statistics([normal[:16], normal[16:]])
    assert model.float_scopes() == ("backbone/stages/stem", "backbone/stages/blocks.0")
    graph = quantize_int8(export_onnx(model), [normal[:16].numpy(), normal[16:].numpy()], model.float_scopes())
    convolutions = _convolutions(graph)
    fed = {name for name, quantized in convolutions.items() if quantized}
    assert fed and not {"/Conv", "/Conv_1"} & fed
    kept = ("/backbone/stages/stem/", "/backbone/stages/blocks.0/")
    assert any(name.startswith(kept) for name in convolutions)  # the scopes named exist in the graph
    assert not any(name.startswith(kept) for name in fed)
    with torch.inference_mode():
        fp32 = model.score(windows)
    int8 = make_runner("openvino", graph, [], 2, "int8").score(windows)
    assert spearmanr(int8.score.numpy(), fp32.score.numpy())[0] >= RANK_AGREEMENT
    correlation = np.corrcoef(int8.anomaly_map.numpy().ravel(), fp32.anomaly_map.numpy().ravel())[0, 1]
    assert correlation >= MAP_CORRELATION


def test_auto_stays_fp32_on_a_cpu_without_bf16_or_int8_units(shipped_cache, monkeypatch):
    """The shipped verdict clears bf16 and int8 for this checkpoint, but a CPU without AVX512-BF16 /
    AMX and without VNNI computes neither natively: ``auto`` keeps fp32 and says why."""
    monkeypatch.setattr(verdict_module, "cpu_capabilities", lambda: {"FP32", "INT8"})
    monkeypatch.setattr(verdict_module, "cpu_flags", lambda: {"avx2", "fma"})
    assert measured_verdict(shipped_cache.sha256).refusal("bf16") is None
    chosen = choose_backend("auto", "auto", shipped_cache)
    assert chosen.precision == "fp32" and chosen.backend in ("onnxruntime", "openvino")
    assert "int8: this CPU has no int8 dot-product units (VNNI or AMX)" in chosen.note
    assert "bf16: this CPU has no bf16 units (AVX512-BF16 or AMX)" in chosen.note


def test_auto_takes_the_fastest_precision_its_verdict_clears(shipped_cache, monkeypatch):
    """int8 refused by its (here: made-up) verdict, bf16 cleared: ``auto`` on a CPU with both units
    scores in bf16 after the rank check on the footage's windows; no verdict at all: fp32."""
    monkeypatch.setattr(verdict_module, "cpu_capabilities", lambda: {"FP32", "BF16", "INT8"})
    monkeypatch.setattr(verdict_module, "cpu_flags", lambda: {"avx512_bf16", "avx512_vnni"})
    made_up = Verdict({"fp32": 0.967, "bf16": 0.9669, "int8": 0.95}, {"bf16": True, "int8": True}, "made up")
    monkeypatch.setattr(choice_module, "measured_verdict", lambda sha256: made_up)
    chosen = choose_backend("auto", "auto", shipped_cache)
    assert (chosen.backend, chosen.precision) == ("openvino", "bf16")
    assert chosen.note.startswith("bf16: micro AUC 0.9669 against fp32's 0.9670")
    monkeypatch.setattr(choice_module, "measured_verdict", lambda sha256: Verdict())
    plain = choose_backend("auto", "auto", shipped_cache)
    assert plain.precision == "fp32"
    assert "int8: no measured AUC for this checkpoint" in plain.note


def test_auto_skips_a_precision_its_verdict_measured_slower_than_fp32(shipped_cache, shipped_checkpoint, ped2,
                                                                      tmp_path, monkeypatch, capsys):
    """``--save-verdict`` keeps the speed through the pipeline of each reduced precision and each fp32
    runtime (not torch's: it may have run on a GPU), and ``auto`` does not take a precision whose AUC
    holds but which ran slower than the fp32 runtime it would fall back to (PaDiM model-only on the
    EPYC: ONNX Runtime fp32 173.7 images/s, OpenVINO int8-bf16 39.6, fp32 ~37; docs/backends.md):
    with ``--backend auto`` that is ONNX Runtime, with ``--backend openvino`` OpenVINO fp32. The rows'
    figures are set here: what is under test is the bench's and ``auto``'s bookkeeping, not the
    scoring (test_still_pipeline)."""
    import anomstream.pipeline.evaluation.backends as accuracy_module
    from anomstream.pipeline.bench import BenchOptions, run_accuracy

    speeds = {"torch": 500.0, "onnxruntime": 173.7, "openvino": 37.0, "openvino_int8-bf16": 39.6, "openvino_int8": 35.0,
              "openvino_bf16": 30.0}
    monkeypatch.setattr(accuracy_module, "backend_accuracy", lambda checkpoint, accuracy, label, settings, out:
                        BackendAccuracy(label, 0.967, 0.977, 0.955, (("01", 134, 179),), speeds[label]))
    monkeypatch.setattr(verdict_module, "cpu_capabilities", lambda: {"FP32", "BF16", "INT8"})
    monkeypatch.setattr(verdict_module, "cpu_flags", lambda: {"avx512_bf16", "avx512_vnni"})
    backends = ("torch", "onnxruntime", "openvino", "openvino:int8-bf16", "openvino:int8", "openvino:bf16")
    run_accuracy(str(shipped_checkpoint), f"ped2:{ped2}", BenchOptions(backends=backends, out=str(tmp_path / "bench")),
                 save_verdict=True)
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: ")
    kept = measured_verdict(shipped_cache.sha256)
    assert kept.fps == {"fp32:onnxruntime": 173.7, "fp32:openvino": 37.0, "int8-bf16": 39.6, "int8": 35.0, "bf16": 30.0}
    assert kept.refusal("int8-bf16") is None and kept.slower("int8-bf16", "openvino") is None
    assert kept.slower("int8-bf16", "onnxruntime") == ("measured slower than onnxruntime fp32 (39.6 against 173.7 "
                                                       "frames/s through the pipeline)")
    assert kept.slower("int8-bf16", "torch") is None  # not measured: no refusal
    chosen = choose_backend("auto", "auto", shipped_cache)
    assert (chosen.backend, chosen.precision) == ("onnxruntime", "fp32")
    assert "int8-bf16: measured slower than onnxruntime fp32 (39.6 against 173.7 frames/s" in chosen.note
    on_openvino = choose_backend("openvino", "auto", shipped_cache)  # its fallback is OpenVINO fp32, slower still
    assert (on_openvino.backend, on_openvino.precision) == ("openvino", "int8-bf16")
    speeds["openvino_int8-bf16"] = 30.0  # now slower than OpenVINO fp32, but that fails its check: nothing to fall to
    run_accuracy(str(shipped_checkpoint), f"ped2:{ped2}", BenchOptions(backends=backends, out=str(tmp_path / "bench")),
                 save_verdict=True)
    assert choose_backend("openvino", "auto", shipped_cache).precision == "fp32"
    monkeypatch.setattr(shipped_cache, "parity", lambda backend, precision: {"score": 0.5, "map": 0.0})
    on_openvino = choose_backend("openvino", "auto", shipped_cache)
    assert (on_openvino.backend, on_openvino.precision) == ("openvino", "int8-bf16")


def test_auto_takes_int8_with_bf16_float_parts_where_the_cpu_has_bf16_units(int8_cache, monkeypatch):
    """The shipped verdict clears int8-bf16 (int8 convolutions, the float parts in bf16): on a CPU with
    AMX, and on one with AVX512-BF16 and VNNI but no AMX (measured faster than int8 on both),
    ``auto`` takes it after the rank check; with VNNI but no bf16 units (AVX-VNNI alone) plain
    int8, saying why not int8-bf16."""
    monkeypatch.setattr(verdict_module, "cpu_capabilities", lambda: {"FP32", "BF16", "INT8"})
    for flags in ({"amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni"}, {"avx512_bf16", "avx512_vnni"}):
        monkeypatch.setattr(verdict_module, "cpu_flags", lambda flags=flags: flags)
        chosen = choose_backend("auto", "auto", int8_cache)
        assert (chosen.backend, chosen.precision, chosen.required) == ("openvino", "int8-bf16", False)
        assert is_ir(chosen.graph) and chosen.note.startswith("int8-bf16: micro AUC 0.9673 against fp32's 0.9671")
    agreement = int8_cache.rank_agreement("openvino", "int8-bf16")
    assert min(agreement.values()) >= RANK_AGREEMENT, agreement
    monkeypatch.setattr(verdict_module, "cpu_capabilities", lambda: {"FP32", "INT8"})
    monkeypatch.setattr(verdict_module, "cpu_flags", lambda: {"avx2", "avx_vnni"})
    chosen = choose_backend("auto", "auto", int8_cache)
    assert (chosen.backend, chosen.precision) == ("openvino", "int8")
    assert "int8-bf16: this CPU has no bf16 units (AVX512-BF16 or AMX)" in chosen.note
    with pytest.raises(choice_module.BackendError, match=r"^--precision int8-bf16 runs in OpenVINO"):
        choose_backend("torch", "int8-bf16", int8_cache)


def test_auto_quantizes_once_when_nncf_fails_and_goes_on_to_bf16(shipped_cache, monkeypatch):
    """int8-bf16 and int8 share one quantized model: when NNCF fails, ``auto`` tries it once (a
    quantization takes ~10 s) and goes on to bf16, saying why for both."""
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise choice_module.BackendError("--precision int8: NNCF could not quantize the graph (out of memory)")

    monkeypatch.setattr(choice_module, "quantize_int8", failing)
    monkeypatch.setattr(verdict_module, "cpu_capabilities", lambda: {"FP32", "BF16", "INT8"})
    monkeypatch.setattr(verdict_module, "cpu_flags", lambda: {"amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni"})
    chosen = choose_backend("auto", "auto", shipped_cache)
    assert (chosen.backend, chosen.precision, len(calls)) == ("openvino", "bf16", 1)
    for precision in ("int8-bf16", "int8"):
        assert f"{precision}: --precision int8: NNCF could not quantize the graph (out of memory)" in chosen.note


def test_footage_whose_files_changed_is_quantized_again_and_absent_footage_uses_the_newest_graph(
        shipped_cache, ped2, tmp_path, monkeypatch):
    """The cached int8 model is keyed by the footage's file names and sizes, not its spec alone: a
    frame added to the folder makes a new one; with the footage gone, the newest one made from it."""
    import shutil

    frames = sorted((ped2 / "training" / "frames" / "01").glob("*.jpg"))
    footage = tmp_path / "normal"
    footage.mkdir()
    for frame in frames[:12]:
        shutil.copy(frame, footage)
    made = []

    def quantized(*args, **kwargs):
        made.append(f"int8 graph {len(made) + 1}".encode())
        return made[-1]

    monkeypatch.setattr(choice_module, "quantize_int8", quantized)

    def cache() -> GraphCache:
        return GraphCache(shipped_cache.model, shipped_cache.checkpoint, shipped_cache.sha256, None, [str(footage)])

    assert cache().graph("int8") == b"int8 graph 1" and cache().graph("int8") == b"int8 graph 1"
    shutil.copy(frames[12], footage)
    assert cache().graph("int8") == b"int8 graph 2"
    footage.rename(tmp_path / "moved")
    gone = cache()
    assert gone.footage_refusal("int8") is None and gone.graph("int8") == b"int8 graph 2" and len(made) == 2
    shutil.rmtree(tmp_path / "cache")
    assert cache().footage_refusal("int8") == f"--quantization-data {footage}: not on this machine"
    calibrations = GraphCache(shipped_cache.model, shipped_cache.checkpoint, shipped_cache.sha256, None, [str(footage)],
                              footage_given=False)
    assert calibrations.footage_refusal("int8") == (
        f"the calibration's footage {footage} is not on this machine (a path from the folder the checkpoint was "
        f"calibrated in: run from there, or give --quantization-data)")
    spec = "mtd:data/mtd?split=train&seed=0"  # a still dataset's root, named from another folder
    named = GraphCache(shipped_cache.model, shipped_cache.checkpoint, shipped_cache.sha256, None, [spec],
                       footage_given=False)
    assert footage_path(spec) == Path("data/mtd") and named.footage_refusal("bf16") is None
    with pytest.raises(AnomstreamError, match=r"^--precision int8: the calibration's footage mtd:data/mtd\?split=train"
                                              r"&seed=0 is not on this machine \(a path from the folder the checkpoint "
                                              r"was calibrated in: run from there, or give --quantization-data\)$"):
        named.graph("int8")
    still = GraphCache(shipped_cache.model, shipped_cache.checkpoint, "4" * 64, None, [str(frames[0])],
                       footage_given=False)  # there, but not footage: said as such, no hint about folders
    with pytest.raises(AnomstreamError, match=r"^the calibration's footage .*000\.jpg: a still image, not a video; "
                                              r"score the folder that holds it$"):
        still.graph("int8")
    clip = str(ped2 / "testing" / "frames" / "02")
    assert footage_path(f"{clip}?start=00:00:01") == Path(clip) and footage_path("D:\\normal") == Path("D:\\normal")
    assert [footage_path(spec) for spec in ("rtsp://cam/x", "camera:0", f"ped2:{ped2}", "linescan:x?tile=4")] == [None] * 4


def test_the_shipped_verdicts_are_for_the_shipped_checkpoints_and_refusals_say_why(shipped_checkpoint):
    """A shipped checkpoint whose weights change loses its verdict (keyed by sha256) instead of
    keeping one measured on other weights."""
    from anomstream.pipeline.assets import CONFIGS, PRECISION_VERDICTS

    shipped = json.loads(PRECISION_VERDICTS.read_text())
    hashes = {read_checkpoint_and_hash(path)[1] for path in (CONFIGS / "weights").glob("*.pt")}
    assert set(shipped) <= hashes and read_checkpoint_and_hash(shipped_checkpoint)[1] in shipped
    verdict = Verdict({"fp32": 0.967, "bf16": 0.9669, "int8": 0.960}, {"bf16": False, "int8": True})
    assert verdict.refusal("int8") == "its measured micro AUC is 0.0070 below fp32's (at most 0.002 allowed)"
    assert verdict.refusal("bf16") == "its measured events differ from fp32's"
    assert Verdict().refusal("bf16").startswith("no measured AUC for this checkpoint")
    still = Verdict({"fp32": 0.729, "int8": 0.7286, "bf16": 0.7284}, {"int8": True, "bf16": True}, "mtd test set",
                    {"fp32": 0.9208, "int8": 0.9206, "bf16": 0.9150})
    assert still.refusal("int8") is None
    assert still.refusal("bf16") == "its measured pixel AUROC is 0.0058 below fp32's (at most 0.002 allowed)"
    assert still.summary("int8") == ("int8: image AUROC 0.7286 against fp32's 0.7290, pixel AUROC 0.9206 against 0.9208 "
                                     "(mtd test set)")


def test_events_pair_by_stream_and_order_and_count_their_shift():
    reference = BackendAccuracy("torch", 0.967, 0.977, 0.955, (("01", 134, 179), ("09", 71, 119)), 24.8)
    shifted = BackendAccuracy("openvino_int8", 0.967, 0.978, 0.954, (("01", 134, 179), ("09", 76, 119)), 124.1)
    assert shifted.event_shift(reference) == 5 and shifted.events_agree(reference)
    apart = BackendAccuracy("x", 0.9, 0.9, 0.9, (("01", 134, 179), ("09", 120, 130)), 1.0)
    assert apart.event_shift(reference) is None and not apart.events_agree(reference)
    fewer = BackendAccuracy("x", 0.9, 0.9, 0.9, (("01", 134, 179),), 1.0)
    assert fewer.event_shift(reference) is None


class _Altered:
    """A broken runtime: the real one's output, then ``change`` applied to it."""

    def __init__(self, runner, change):
        self.runner, self.change = runner, change

    def score(self, windows):
        output = self.runner.score(windows)
        self.change(output)
        return output


def _alter_the_runtime(monkeypatch, change) -> None:
    from anomstream.pipeline.backends import runners

    real = runners.make_runner
    monkeypatch.setattr(choice_module, "make_runner", lambda *args, **kwargs: _Altered(real(*args, **kwargs), change))


def _reverse_the_runtimes_scores(monkeypatch) -> None:
    """Scores that no longer follow the model's: each window's score negated."""
    _alter_the_runtime(monkeypatch, lambda output: setattr(output, "score", -output.score))


def test_a_broken_runtime_fails_the_rank_check(shipped_cache, monkeypatch):
    """A runtime whose scores no longer follow the model's (here: reversed) is refused at the start
    of the run in one line, by name; ``auto`` would fall back to fp32."""
    from anomstream.pipeline.backends import runners

    _reverse_the_runtimes_scores(monkeypatch)
    with pytest.raises(runners.BackendError) as refused:
        choose_backend("openvino", "bf16", shipped_cache)
    assert str(refused.value).startswith("--backend openvino --precision bf16: its score ranks normal windows unlike "
                                         "torch fp32 (rank agreement -")
    assert str(refused.value).endswith("needed); use --precision fp32")


def test_a_runtime_whose_map_no_longer_follows_the_models_fails_the_check(shipped_cache, monkeypatch):
    """The scores rank windows as torch does, but the map is upside down: refused, naming the map."""
    from anomstream.pipeline.backends import runners

    _alter_the_runtime(monkeypatch, lambda output: setattr(output, "anomaly_map", output.anomaly_map.flip(-2)))
    with pytest.raises(runners.BackendError) as refused:
        choose_backend("openvino", "bf16", shipped_cache)
    message = str(refused.value)
    assert message.startswith("--backend openvino --precision bf16: its anomaly map follows torch fp32's poorly over "
                              "normal windows (correlation "), message
    assert message.endswith(f", at least {MAP_CORRELATION} needed); use --precision fp32")
    assert float(message.split("correlation ")[1].split(",")[0]) < 0.5


def _flip_a_region(output) -> None:
    """What a flipped codeword does (DSR trained on MTD, ONNX Runtime fp32 on noise windows: the map
    0.037 of its range off over part of one window, 13 % of its pixels beyond 1e-4, correlation 0.99999)."""
    output.anomaly_map[0, 20:36, 20:36] += 0.04 * output.anomaly_map.abs().max()


def _spike_a_region(output) -> None:
    """A region of one window far off: few pixels, but the map no longer follows torch's."""
    output.anomaly_map[0, 20:52, 20:52] += 3.0 * output.anomaly_map.abs().max()


@pytest.mark.parametrize("change, refusal", [
    (_flip_a_region, None),
    (lambda output: setattr(output, "anomaly_map", output.anomaly_map + 0.01 * output.anomaly_map.abs().max()),
     r"75% of its pixels within 0\.01, correlation 1\.0000"),
    (_spike_a_region, r"75% of its pixels within \d\.\de-0[6-8], correlation 0\.5")])
def test_fp32_takes_a_map_that_differs_over_a_region_but_not_one_that_moved(shipped_cache, monkeypatch, change,
                                                                            refusal):
    """fp32's check holds every output within 1e-4 of its range; in a graph that makes discrete
    choices (DMAD's memory and DSR's codebooks pick a codeword by argmin) the map alone may instead
    differ over a region, with three quarters of its pixels within 1e-4 and the whole following
    torch's (correlation 0.999); a map moved everywhere, or far off over a region, is refused."""
    _alter_the_runtime(monkeypatch, change)
    measured = shipped_cache.parity("onnxruntime", "fp32")
    assert measured["discrete_choices"] == 1.0 and measured["map"] > 0.01
    if refusal is None:
        assert measured["map_quantile"] <= 1e-4 and measured["map_correlation"] >= 0.999
        assert choose_backend("onnxruntime", "fp32", shipped_cache).backend == "onnxruntime"
        return
    with pytest.raises(choice_module.CheckRefusal) as refused:
        choose_backend("onnxruntime", "fp32", shipped_cache)
    message = str(refused.value)
    assert message.startswith("--backend onnxruntime: its map differs from torch's by ") and re.search(refusal, message)
    assert message.endswith("(allowed 0.0001, or 75% of the pixels within it and a correlation of 0.999); use "
                            "--backend torch")


def test_fp32_holds_the_map_of_a_graph_without_discrete_choices_to_the_tolerance(shared_data, tmp_path, monkeypatch):
    """PaDiM's graph picks nothing by argmin: the same region flipped in its map is refused."""
    model_class, config = SMALL["padim"]
    model = model_class(config).eval()
    normal = still_windows([r.path for r in mtd_split(shared_data / "mtd")[0][:12]], 64)
    model.fit_statistics([normal[:6], normal[6:]])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = GraphCache(model, tmp_path / "model.pt", "2" * 64)
    assert cache.parity("onnxruntime", "fp32")["discrete_choices"] == 0.0
    _alter_the_runtime(monkeypatch, _flip_a_region)
    cache = GraphCache(model, tmp_path / "model.pt", "3" * 64)
    with pytest.raises(choice_module.CheckRefusal, match=r"^--backend onnxruntime: its map differs from torch's by "
                                                         r"0\.04 of its range \(allowed 0\.0001 in fp32\)"):
        choose_backend("onnxruntime", "fp32", cache)


def test_fp32_parity_measures_the_maps_spread_and_correlation_and_the_graphs_choices(shipped_cache):
    measured = shipped_cache.parity("onnxruntime", "fp32")  # the shipped DMAD, noise windows: all within 1e-4
    terms = {f"term_{name}" for name in shipped_cache.model.term_names}
    assert set(measured) == {"score", "map", "map_quantile", "map_correlation", "discrete_choices", *terms}
    assert measured["map_quantile"] <= measured["map"] <= 1e-4 and measured["map_correlation"] > 0.99999
    assert len(terms) > 2 and measured["discrete_choices"] == 1.0  # its memory's codeword, by argmin


@pytest.mark.parametrize("output, refusal", [
    ("score", "its score gives no ranking of normal windows (constant or not finite over them; torch fp32's varies)"),
    ("anomaly_map", "its anomaly map is constant or not finite over normal windows (torch fp32's varies)")])
def test_a_runtime_whose_score_or_map_is_constant_is_refused_saying_so(shipped_cache, monkeypatch, output, refusal):
    """One score, or one map, for every window (PaDiM's int8 model before its map filters were kept in
    float gave 18.49 for every MTD image, and one map): no ranking, said as such (not "correlation nan")."""
    from anomstream.pipeline.backends import runners

    _alter_the_runtime(monkeypatch, lambda scored: setattr(scored, output, getattr(scored, output) * 0 + 18.49))
    with pytest.raises(runners.BackendError) as refused:
        choose_backend("openvino", "bf16", shipped_cache)
    assert str(refused.value) == f"--backend openvino --precision bf16: {refusal}; use --precision fp32"


def test_an_int8_export_that_ranks_windows_unlike_torch_is_refused_before_anything_is_written(shipped_checkpoint, ped2,
                                                                                             made_graphs, tmp_path,
                                                                                             monkeypatch):
    """``anomstream export --precision int8`` makes the run's start-of-run check: a quantized graph
    whose scores no longer follow the model's (here: reversed) leaves no folder behind."""
    from anomstream.pipeline.backends import runners
    from anomstream.pipeline.backends.export import export_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _copy_graphs(made_graphs, tmp_path / "cache", (".onnx", ".ir"))
    _reverse_the_runtimes_scores(monkeypatch)
    with pytest.raises(runners.BackendError, match=r"^--backend openvino --precision int8: its score ranks normal "
                                                   r"windows unlike torch fp32 \(rank agreement -"):
        export_checkpoint(shipped_checkpoint, "openvino", tmp_path / "int8", precision="int8",
                          quantization_data=[str(ped2 / "training" / "frames" / "01")])
    assert not (tmp_path / "int8").exists()
    monkeypatch.undo()  # the real runtime, a new cache (the reversed measure was kept with the graph)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    _copy_graphs(made_graphs, tmp_path / "cache2", (".onnx", ".ir"))
    metadata = export_checkpoint(shipped_checkpoint, "openvino", tmp_path / "int8", precision="int8",
                                 quantization_data=[str(ped2 / "training" / "frames" / "01")])
    measured = metadata["rank_agreement_with_torch"]
    assert metadata["precision"] == "int8" and measured.pop("map_correlation") >= MAP_CORRELATION
    assert min(measured.values()) >= RANK_AGREEMENT
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == ["anomstream.json", "model.bin", "model.xml"]


def test_a_saved_verdict_keeps_its_test_sets_figures_and_what_is_refused_now(tmp_path, monkeypatch):
    """--save-verdict merges with what was measured before on the same test set (a precision not
    measured now is kept), keeps a precision refused at the start now as refused (its earlier figures
    dropped; measured again later, its refusal dropped), and replaces a verdict measured on another
    test set whole: a still model's image AUROC against a video set's micro AUC would clear what
    neither cleared."""
    from anomstream.pipeline.backends.verdict import save_verdict
    from anomstream.pipeline.errors import AnomstreamError
    from anomstream.pipeline.evaluation.backends import parse_accuracy

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sha = "a" * 64
    save_verdict(sha, Verdict({"fp32": 0.75, "int8": 0.74, "bf16": 0.749}, {"int8": True, "bf16": True},
                              "mtd test set, 2026-12-07", {"fp32": 0.92, "int8": 0.919, "bf16": 0.92},
                              {"fp32:onnxruntime": 150.0, "int8": 340.0, "bf16": 290.0}))
    save_verdict(sha, Verdict({"fp32": 0.75, "int8-bf16": 0.7495}, {"int8-bf16": True}, "mtd test set, 2026-12-08",
                              {"fp32": 0.92, "int8-bf16": 0.9201}, {"int8-bf16": 380.0, "fp32:openvino": math.nan},
                              {"bf16": "its anomaly map follows torch fp32's poorly (mtd test set, 2026-12-08)"}))
    kept = measured_verdict(sha)
    assert sorted(kept.micro_auc) == sorted(kept.pixel_auroc) == ["fp32", "int8", "int8-bf16"]
    assert kept.fps == {"fp32:onnxruntime": 150.0, "int8": 340.0, "int8-bf16": 380.0}  # no NaN kept
    assert kept.refusal("int8") == "its measured image AUROC is 0.0100 below fp32's (at most 0.002 allowed)"
    assert kept.refusal("int8-bf16") is None and kept.refusal("bf16") == (
        "refused by the start-of-run check: its anomaly map follows torch fp32's poorly (mtd test set, 2026-12-08)")
    save_verdict(sha, Verdict({"fp32": 0.75, "bf16": 0.7499}, {"bf16": True}, "mtd test set, 2026-12-09",
                              {"fp32": 0.92, "bf16": 0.9199}))
    again = measured_verdict(sha)
    assert again.refused == {} and again.refusal("bf16") is None and sorted(again.micro_auc) == [
        "bf16", "fp32", "int8", "int8-bf16"]
    save_verdict(sha, Verdict({"fp32": 0.70, "bf16": 0.6995}, {"bf16": True}, "ped2 test set, 2026-12-08"))
    replaced = measured_verdict(sha)
    assert replaced.micro_auc == {"fp32": 0.70, "bf16": 0.6995} and replaced.pixel_auroc == replaced.fps == {}
    assert replaced.refusal("int8").startswith("no measured AUC")

    from anomstream.pipeline.assets import PRECISION_VERDICTS  # a shipped checkpoint's: its user's run adds to it

    shipped_sha, shipped = next(iter(json.loads(PRECISION_VERDICTS.read_text()).items()))
    assert shipped["source"].startswith("Ped2 test set (12 clips")
    save_verdict(shipped_sha, Verdict({"fp32": shipped["micro_auc"]["fp32"]}, {}, "ped2 test set, 2026-12-09",
                                      refused={"bf16": "its score ranks normal windows unlike torch fp32 (...)"}))
    added = measured_verdict(shipped_sha)
    assert added.refusal("int8") is None and added.refusal("int8-bf16") is None
    assert added.refusal("bf16").startswith("refused by the start-of-run check: its score ranks")

    (tmp_path / "empty").mkdir()
    with pytest.raises(AnomstreamError) as refused:
        parse_accuracy(f"mtd:{tmp_path / 'empty'}")
    assert str(refused.value) == f"--accuracy mtd:{tmp_path / 'empty'}: no MT_Free/Imgs under {tmp_path / 'empty'}"
