"""Replica backends: every model's scoring graph exported to ONNX and run by ONNX Runtime and
OpenVINO on real frames, compared with torch; `anomstream export`. (Every scoring run of the suite
goes through the default backend, ONNX Runtime here; OpenVINO through the pipeline: test_pipeline's
3-replica run.)"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import REPO
from small_models import SMALL, still_windows

from anomstream.pipeline.backends.choice import TOLERANCE, GraphCache, choose_backend, parity
from anomstream.pipeline.backends.graph import export_onnx
from anomstream.pipeline.backends.runners import BackendError, ChunkedRunner, make_runner
from anomstream.pipeline.checkpoint import load_model
from anomstream.pipeline.datasets.layouts import mtd_split
from anomstream.pipeline.files import read_image
from anomstream.pipeline.stream.preprocess import prepare_frame

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def mtd_windows(shared_data):
    """12 defect-free MTD training images (to fit the statistics of PaDiM and DS2) and 4 crack images, 64x64."""
    train, test = mtd_split(shared_data / "mtd")
    cracks = [r.path for r in test if r.category == "MT_Crack"][:4]
    return still_windows([r.path for r in train[:12]], 64), still_windows(cracks, 64)


def ped2_windows(ped2, model, count: int = 6) -> torch.Tensor:
    """``count`` windows of consecutive frames of Ped2 test clip 01 (an anomalous stretch), uint8."""
    paths = sorted((ped2 / "testing" / "frames" / "01").iterdir())[120:120 + count + model.window_length - 1]
    frames = np.stack([prepare_frame(read_image(p), model.image_size, model.channels) for p in paths])
    return torch.from_numpy(np.stack([frames[i:i + model.window_length] for i in range(count)]))


@pytest.mark.parametrize("name", ["dmad", *sorted(SMALL)])
def test_every_model_exports_and_both_runtimes_match_torch_on_real_frames(name, mtd_windows, ped2, shipped_checkpoint):
    """Score, map and every term of ONNX Runtime and OpenVINO (fp32) within 1e-4 of the range of
    torch's, on a batch size other than the one traced (measured: at most 5e-5, most near 1e-6);
    exporting leaves the model as it was (eval mode, same scores)."""
    torch.manual_seed(0)
    if name == "dmad":
        model, _ = load_model(shipped_checkpoint)
        windows = ped2_windows(ped2, model)
    else:
        model_class, config = SMALL[name]
        model = model_class(config).eval()
        normal, windows = mtd_windows
        if model.fits_statistics:
            model.fit_statistics([normal[:6], normal[6:]])
    with torch.inference_mode():
        before = model.score(windows).score
    graph = export_onnx(model)
    assert not model.training
    with torch.inference_mode():
        torch.testing.assert_close(model.score(windows).score, before, rtol=0, atol=0)
    for backend in ("onnxruntime", "openvino"):
        difference = parity(backend, "fp32", model, graph, windows)
        assert set(difference) == {"score", "map", *(f"term_{t}" for t in model.term_names)}
        assert max(difference.values()) <= TOLERANCE["fp32"], (backend, difference)


def test_a_graph_scores_at_most_the_models_images_per_call(mtd_windows):
    """DS2's graph embeds every patch of a call at once (eager DS2 embeds ``embed_batch`` patches at a
    time): the runner cuts a batch into calls of ``images_per_graph_call()`` windows, here 2 (9
    patches per 64-px image, 18 per embedding), and the outputs are those of one call of them all."""
    model_class, config = SMALL["ds2"]
    model = model_class(replace(config, embed_batch=18)).eval()
    normal, cracks = mtd_windows
    model.fit_statistics([normal[:6], normal[6:]])
    assert model.images_per_graph_call() == 2
    graph = export_onnx(model)
    whole = make_runner("onnxruntime", graph, model.term_names, 1)
    chunked = make_runner("onnxruntime", graph, model.term_names, 1, images_per_call=model.images_per_graph_call())
    calls = []
    real = chunked.runner.score
    chunked.runner.score = lambda windows: calls.append(len(windows)) or real(windows)
    windows = torch.cat([cracks, normal[:1]])
    parts, one_call = chunked.score(windows), whole.score(windows)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(parts.score, one_call.score)
    torch.testing.assert_close(parts.anomaly_map, one_call.anomaly_map)
    assert parts.terms.keys() == one_call.terms.keys()
    for name in parts.terms:
        torch.testing.assert_close(parts.terms[name], one_call.terms[name])


def test_export_writes_the_graph_and_what_its_users_need(shipped_checkpoint, ped2, tmp_path):
    """`anomstream export` of the shipped (calibrated) checkpoint: model.onnx that ONNX Runtime alone
    runs on Ped2 windows to torch's scores (the calibration's reference map is inside), and
    anomstream.json with the model, input, outputs, weights, the calibration's threshold and
    statistics and the measured parity."""
    import onnxruntime

    from anomstream.pipeline.stream.scorer import Scorer

    out = tmp_path / "onnx"
    done = subprocess.run([sys.executable, "-m", "anomstream.pipeline.cli", "export", str(shipped_checkpoint), "--format", "onnx",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"exported dmad (onnx): model.onnx and anomstream.json in {out}; largest difference")
    metadata = json.loads((out / "anomstream.json").read_text())
    checkpoint = torch.load(shipped_checkpoint, weights_only=True)
    assert metadata["model"] == "dmad" and metadata["files"] == ["model.onnx"]
    assert metadata["input"]["shape"] == ["N", 5, 1, 128, 128] and metadata["input"]["dtype"] == "uint8"
    assert metadata["outputs"][:2] == ["score", "map"] and len(metadata["outputs"]) == 2 + len(checkpoint_terms(metadata))
    threshold = -np.log10(checkpoint["calibration"]["false_alarm_rate"])
    assert metadata["calibration"]["threshold"] == pytest.approx(threshold, abs=1e-4)
    assert metadata["calibration"]["reference_maps"] == "inside the graph"
    assert max(metadata["parity_with_torch"].values()) <= TOLERANCE["fp32"]

    calibration = checkpoint["calibration"]
    scorer = Scorer(str(shipped_checkpoint), threads=2, reference={k: v.numpy() for k, v in calibration["reference"].items()})
    windows = ped2_windows(ped2, scorer.model)
    expected = scorer.score_windows(windows)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip(metadata["outputs"], session.run(None, {"windows": windows.numpy()})))
    np.testing.assert_allclose(got["score"], expected.score.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["term_gradient_excess"], expected.terms["gradient_excess"].numpy(), rtol=1e-4, atol=1e-6)


def checkpoint_terms(metadata: dict) -> list[str]:
    return [name for name in metadata["outputs"] if name.startswith("term_")]


def test_export_and_backend_refusals_are_one_line(shipped_checkpoint, tmp_path):
    from anomstream.pipeline.backends.export import export_checkpoint
    from anomstream.pipeline.errors import AnomstreamError

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(AnomstreamError) as refused:
        export_checkpoint(shipped_checkpoint, "onnx", taken)
    assert str(refused.value) == f"{taken}: folder exists and holds other files; name a new or empty folder"
    assert (taken / "notes.txt").read_text() == "mine" and len(list(taken.iterdir())) == 1
    with pytest.raises(AnomstreamError, match=r"^--format: 'tflite' is not one of onnx, openvino$"):
        export_checkpoint(shipped_checkpoint, "tflite", tmp_path / "new")
    model, _ = load_model(shipped_checkpoint)
    cache = GraphCache(model, shipped_checkpoint, "0" * 64)
    with pytest.raises(BackendError, match=r"^--backend onnxruntime computes in fp32 only \(--precision fp32\)$"):
        choose_backend("onnxruntime", "bf16", cache)
    with pytest.raises(BackendError, match=r"^--backend: unknown backend 'tensorrt'; one of torch, onnxruntime, openvino, auto$"):
        choose_backend("tensorrt", "fp32", cache)
    with pytest.raises(BackendError, match=r"^--precision int8 runs in OpenVINO \(--backend openvino or auto\)$"):
        choose_backend("torch", "int8", cache)
    with pytest.raises(BackendError, match=r"^--precision: 'fp16' is not one of auto, fp32, bf16, int8, int8-bf16$"):
        choose_backend("auto", "fp16", cache)
    with pytest.raises(BackendError, match=r"^--precision int8: no normal footage to quantize on \(--quantization-data\)$"):
        choose_backend("openvino", "int8", cache)
    with pytest.raises(AnomstreamError, match=r"^--precision int8: the quantized graph is OpenVINO's \(--format openvino\)$"):
        export_checkpoint(shipped_checkpoint, "onnx", tmp_path / "int8", precision="int8")


def test_the_export_cache_goes_to_the_user_cache_never_beside_the_checkpoint(tmp_path, monkeypatch):
    """A checkpoint may sit in site-packages or a shared models folder: its folder is left as it was."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = tmp_path / "site-packages" / "configs" / "weights"
    weights.mkdir(parents=True)
    (weights / "model.pt").write_bytes(b"weights")
    torch.manual_seed(0)
    model_class, config = SMALL["favae"]
    choice = choose_backend("onnxruntime", "fp32", GraphCache(model_class(config).eval(), weights / "model.pt", "1" * 64))
    assert choice.backend == "onnxruntime" and choice.graph
    assert [p.name for p in weights.iterdir()] == ["model.pt"]
    cached = sorted(p.name for p in (tmp_path / "cache" / "anomstream" / "exports").iterdir())
    assert len(cached) == 2 and cached[0].endswith(".onnx") and cached[1] == cached[0][:-5] + ".parity.json"


def test_a_replica_warms_its_runtime_up_with_the_runs_batch_sizes_before_its_first_batch(ray_session, shipped_checkpoint,
                                                                                         ped2):
    """A runtime's first inference of a shape is slow (OpenVINO makes its kernels then): a replica
    scores one black batch of each size the run sends most (recordings: the batch size; live
    streams: the live batch) while it loads, before the run's clock, and drops the result. Torch
    eager is not warmed (its model may hold state; it has no such cost on the CPU)."""
    from anomstream.pipeline.checkpoint import read_checkpoint_and_hash
    from anomstream.pipeline.driver.plan import RunPlan
    from anomstream.pipeline.driver.run import _batch_sizes, _live_options
    from anomstream.pipeline.stream.live import LiveOptions
    from anomstream.pipeline.stream.scorer import Scorer
    from anomstream.workers.replica import ReplicaActor

    model, _ = load_model(shipped_checkpoint)
    _, sha256 = read_checkpoint_and_hash(str(shipped_checkpoint))
    choice = choose_backend("onnxruntime", "fp32", GraphCache(model, shipped_checkpoint, sha256))
    replica = ReplicaActor.__ray_metadata__.modified_class(1)
    replica.core = scorer = Scorer(str(shipped_checkpoint), 1, "cpu", backend=choice)
    calls = []
    real = scorer.runner.score
    scorer.runner.score = lambda windows: calls.append((tuple(windows.shape), windows.dtype, int(windows.max()))) \
        or real(windows)
    windows = ped2_windows(ped2, model, count=3)
    before = real(windows)
    where = replica.describe([None], (1, 16))
    t, c, size = model.window_length, model.channels, model.image_size
    assert calls == [((1, t, c, size, size), torch.uint8, 0), ((16, t, c, size, size), torch.uint8, 0)]
    assert where["backend"] == "onnxruntime" and where["warmed"] == [1, 16] and where["warning"] is None
    assert replica.busy() == 0.0  # warming is not scoring
    after = real(windows)
    torch.testing.assert_close(after.score, before.score, rtol=0, atol=0)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map, rtol=0, atol=0)
    replica.describe([None])
    assert len(calls) == 2  # asked where it runs at the end of a run: nothing scored

    calls.clear()  # a graph that takes at most 4 windows a call is warmed with the chunks it will see
    scorer.runner = ChunkedRunner(scorer.runner, 4)
    scorer.warm_up((16, 6))
    assert [shape[0] for shape, _, _ in calls] == [2, 4]

    def failing(windows):
        raise RuntimeError("std::bad_alloc\nat line 3")

    scorer.runner = type("Failing", (), {"score": staticmethod(failing)})()
    where = replica.describe([None], (16,))
    assert where["warning"] == "a replica's warm-up failed (std::bad_alloc); its first batches pay for it"

    eager = Scorer(str(shipped_checkpoint), 1, "cpu")
    eager.model.score = None  # would raise if called
    eager.warm_up((16,))

    class Input:
        def __init__(self, is_live: bool) -> None:
            self.is_live = is_live

    recording, camera = Input(False), Input(True)
    assert _batch_sizes([recording, recording], 16, 1) == (16,)
    assert _batch_sizes([camera], 16, 1) == (1,)
    assert _batch_sizes([camera, recording], 8, 4) == (4, 8)
    # the live batch the loop sends: 1 on a CPU (where the exported graphs that warm up score), the batch size on a GPU
    plan = RunPlan(specs=("rtsp://127.0.0.1:1/x",), checkpoint="model.pt", out="s.zarr")
    assert _live_options(plan, 16, on_gpu=False).batch == 1
    assert _live_options(plan, 16, on_gpu=True).batch == 16
    assert _live_options(replace(plan, live=LiveOptions(batch=4)), 16, on_gpu=True).batch == 4
    assert _live_options(replace(plan, view=("127.0.0.1", 8000)), 16, on_gpu=False).preview_size > 0
    assert _live_options(plan, 16, on_gpu=False).preview_size == 0


def test_the_run_hands_its_replicas_the_batch_sizes_to_warm_up_before_the_clock(ray_session, capsys):
    """``_place_replicas`` (called before the run's clock starts) asks every replica to warm up with
    the sizes it is given, and prints a failed warm-up once."""
    import ray

    from anomstream.pipeline.backends.choice import BackendChoice
    from anomstream.pipeline.driver.report import RunReport
    from anomstream.pipeline.driver.run import _place_replicas

    @ray.remote
    class Replica:
        def __init__(self):
            self.asked = []

        def describe(self, model, warm_up=()):
            self.asked.append(tuple(warm_up))
            return {"device": "cpu", "backend": "onnxruntime", "backend_note": "", "pid": 1, "node": "n" * 16,
                    "nice": 0, "warning": "a replica's warm-up failed (bad_alloc); its first batches pay for it",
                    "warmed": list(warm_up)}

        def seen(self):
            return self.asked

    @ray.remote
    class Decoder:
        def ready(self):
            return True

    class Pool:
        replica_actors = [Replica.remote(), Replica.remote()]
        free_decoders = [Decoder.remote()]
        model_call = [None]

    report = RunReport("s.zarr")
    _place_replicas(Pool, report, BackendChoice("onnxruntime"), (1, 16))
    assert ray.get([replica.seen.remote() for replica in Pool.replica_actors]) == [[(1, 16)], [(1, 16)]]
    assert report.replicas == 2 and report.device == "cpu"
    assert capsys.readouterr().err == "warning: a replica's warm-up failed (bad_alloc); its first batches pay for it\n"
