"""Device correctness without a GPU (issue 31): every model trains, fits, calibrates and scores with its
weights and inputs on another device than the CPU, and a tensor made on the wrong device fails here.

The other device is ``meta`` with values (:class:`ValuesOnMeta`): tensors there say ``device='meta'``
(as CUDA tensors say ``cuda``), hold their values in CPU tensors, and each operation that mixes one
with a CPU tensor of one element or more raises :class:`DeviceMixUp`, where CUDA raises "Expected all
tensors to be on the same device". What CUDA allows is allowed: copies across devices (``.to``,
``copy_``, assigning a CPU tensor into a slice), CPU indices into a device tensor, CPU scalars (0-dim)
in arithmetic. ``.numpy()`` of a device tensor fails, as on CUDA. A run on it computes with the CPU's
kernels and generators, so it gives the CPU run's numbers exactly: the tests compare the two. Not
covered: bf16 autocast (torch has no autocast for ``meta``: the fp32 paths only) and CUDA's own
kernels, streams and memory (docs/gpu.md: nothing is measured on a GPU yet).

Also: ``--device`` as every model-running command reads it, and where score's replicas are placed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zarr
from conftest import REPO, first_frames
from small_models import DSR_STAGE1, SMALL, still_windows
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_flatten, tree_map

from anomstream.models.base import LabelledAnomalies
from anomstream.models.dmad import DMAD, DMADConfig
from anomstream.models.dsr import DSR
from anomstream.pipeline import cli
from anomstream.pipeline.calibration.fit import CalibrationOptions, fit_calibration, normal_sources
from anomstream.pipeline.checkpoint import (
    FORMAT,
    choose_device,
    load_model,
    on_cpu,
    precision_context,
    read_checkpoint,
    save_checkpoint,
    set_reference_maps,
)
from anomstream.pipeline.config import ScoreSection
from anomstream.pipeline.driver import run as driver_run
from anomstream.pipeline.errors import AnomstreamError
from anomstream.pipeline.sources.resolve import open_sources
from anomstream.pipeline.stream.scorer import Scorer
from anomstream.pipeline.stream.windows import WindowBatch, window_batches
from anomstream.pipeline.training import loop
from anomstream.pipeline.training.data import WindowDataset, draw_anomalies, load_clips

META = torch.device("meta")
aten = torch.ops.aten
CROSS_DEVICE = {aten.to, aten._to_copy, aten.copy_, aten.copy}  # copies: any two devices, as on CUDA
CPU_INDICES = {aten.index, aten.index_put_, aten.index_put, aten._index_put_impl_}  # CPU indices: allowed on CUDA
FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}
TINY_DMAD = DMADConfig(image_size=32, channels=1, widths=(4, 8, 8, 16), memory_size=16, skip_channels=4, offset_width=4)
MODELS = {**SMALL, "dsr-stage1": (DSR, DSR_STAGE1), "dmad": (DMAD, TINY_DMAD)}


class DeviceMixUp(RuntimeError):
    """An operation met a tensor of the device and a CPU tensor it would refuse on CUDA."""


class OnMeta(torch.Tensor):
    """A tensor on the ``meta`` device whose values are kept in the CPU tensor ``inner``."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> OnMeta:
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(),
                                                   storage_offset=inner.storage_offset(), dtype=inner.dtype,
                                                   layout=inner.layout, device=META, requires_grad=False)

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["inner"], None

    @staticmethod
    def __tensor_unflatten__(inner: dict, meta: None, outer_size: object, outer_stride: object) -> OnMeta:
        return OnMeta(inner["inner"])

    def __repr__(self) -> str:
        return f"OnMeta({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func}: a meta tensor with values used outside ValuesOnMeta")


def _is_meta(device: object) -> bool:
    return device is not None and torch.device(device).type == "meta"


def _plain(x: object) -> object:
    """What an operation on the device computes with on the CPU: values for tensors, cpu for meta."""
    if isinstance(x, OnMeta):
        return x.inner
    return torch.device("cpu") if isinstance(x, torch.device) and x.type == "meta" else x


class ValuesOnMeta(TorchDispatchMode):
    """Every operation on :class:`OnMeta` tensors, or making a tensor on ``meta``, computed on their
    CPU values; an operation mixing them with a CPU tensor raises :class:`DeviceMixUp`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_flatten((args, kwargs))[0]
        target = next((x for x in leaves if isinstance(x, torch.device)), None)  # where the op puts its output
        to_meta = target is not None and target.type == "meta"
        if not to_meta and not any(isinstance(x, OnMeta) for x in leaves):
            return func(*args, **kwargs)
        if func.overloadpacket not in CROSS_DEVICE:
            _check_devices(func, args, kwargs)
        plain_args, plain_kwargs = tree_map(_plain, (args, kwargs))
        out = func(*plain_args, **plain_kwargs)
        if target is not None and not to_meta:  # .cpu(), or made on the CPU
            return out
        for given, plain in zip(args, plain_args):
            if out is plain:  # in place, or returned as it is (.to() with nothing to change)
                if isinstance(given, OnMeta) or not to_meta:
                    return given
                out = out.clone()  # a CPU tensor .to("meta"): a copy, as to a real device
        with torch.inference_mode(False):  # a view of a normal tensor is a normal tensor, also in inference mode
            wrapped = tree_map(lambda x: OnMeta(x) if isinstance(x, torch.Tensor) else x, out)
        if func.overloadpacket in CROSS_DEVICE:
            return wrapped
        return return_and_correct_aliasing(func, args, kwargs, wrapped)


def _check_devices(func, args: tuple, kwargs: dict) -> None:
    """DeviceMixUp when a CPU tensor of one element or more (or a meta tensor without values, made
    around the harness) meets a tensor on the device."""
    others = list(tree_flatten(kwargs)[0])
    for position, arg in enumerate(args):
        if not (position == 1 and func.overloadpacket in CPU_INDICES and isinstance(args[0], OnMeta)):
            others += tree_flatten(arg)[0]
    for x in others:
        if isinstance(x, torch.Tensor) and not isinstance(x, OnMeta):
            if x.device.type == "meta":
                raise RuntimeError(f"{func}: a meta tensor without values (made around the harness)")
            if x.dim() > 0:
                raise DeviceMixUp(f"{func}: a {x.device.type} tensor of shape {tuple(x.shape)} meets tensors on "
                                  f"the model's device (meta)")


class _FromData(TorchFunctionMode):
    """``torch.tensor(data, device=meta)`` (which makes its tensor around the dispatcher) made on the CPU
    and moved, so that it keeps its values."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FROM_DATA and _is_meta(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": "cpu"}).to(META)
        return func(*args, **kwargs)


@contextmanager
def values_on_meta() -> Iterator[None]:
    """Inside: ``meta`` is a device with values (module docstring)."""
    with _FromData(), ValuesOnMeta():
        yield


# --- the harness itself -------------------------------------------------------------------------------

def test_the_meta_device_keeps_values_and_refuses_what_cuda_refuses():
    with values_on_meta():
        x = torch.arange(6.0).reshape(2, 3).to(META)
        assert x.device == META and (x + torch.ones(3, device=x.device)).sum().item() == 21.0
        assert float((x * torch.tensor(2.0)).sum()) == 30.0  # a CPU scalar: allowed, as on CUDA
        assert torch.tensor([1.0, 2.0], device=x.device).cpu().tolist() == [1.0, 2.0]
        x[0] = torch.zeros(3)  # a copy into the device: allowed
        assert x[torch.tensor([1])].cpu().tolist() == [[3.0, 4.0, 5.0]]  # CPU indices: allowed
        with pytest.raises(DeviceMixUp, match=r"a cpu tensor of shape \(3,\)"):
            x + torch.zeros(3)
        with pytest.raises(DeviceMixUp):
            torch.where(torch.ones(2, 3, dtype=torch.bool), x, x)
        with pytest.raises(RuntimeError, match="numpy"):
            x.numpy()  # as on CUDA: .cpu() first
        assert x.cpu().numpy().tolist() == [[0.0, 0.0, 0.0], [3.0, 4.0, 5.0]]


# --- every model on the device, against the same run on the CPU ---------------------------------------

@pytest.fixture(scope="module")
def still_folder(tmp_path_factory) -> Path:
    """52 textured 64 px RGB images (smooth noise): enough normal frames for a calibration (50)."""
    folder = tmp_path_factory.mktemp("stills")
    rng = np.random.default_rng(0)
    for index in range(52):
        coarse = rng.integers(60, 200, (8, 8, 3)).astype(np.uint8)
        image = cv2.resize(coarse, (64, 64), interpolation=cv2.INTER_CUBIC) + rng.integers(0, 20, (64, 64, 3)).astype(np.uint8)
        cv2.imwrite(str(folder / f"{index:03d}.png"), image)
    return folder


def _data(name: str, still_folder: Path, sample_clip: Path) -> tuple[torch.Tensor, str]:
    """(8 training windows uint8 (8, T, C, H, W), the normal data spec) of model ``name``."""
    if name == "dmad":
        windows = WindowDataset(load_clips(str(sample_clip), 32, 1, False), 5)
        return torch.stack([windows[i] for i in range(0, 80, 10)]), str(sample_clip)
    return still_windows(sorted(still_folder.iterdir())[:8], 64), str(still_folder)


def _train_fit_calibrate_score(name: str, device: torch.device, windows: torch.Tensor, spec: str) -> dict:
    """What the pipeline does with model ``name`` on ``device``: two training steps through the loop's
    ``gradient_step`` (progress 0 then 0.8: DSR's stage 2 then 3), the statistics fit, a calibration
    and a batch of the Scorer; the numbers of each."""
    model_class, config = MODELS[name]
    torch.manual_seed(0)
    model = model_class(config).to(device)
    generator = torch.Generator().manual_seed(0)
    found: dict = {}
    if model.trains_by_gradient:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        labelled = LabelledAnomalies(windows[:2, -1], torch.rand(2, 64, 64), torch.tensor([True, False]))
        for progress in (0.0, 0.8):
            model.train()
            drawn = draw_anomalies(labelled, 2, generator, device) if model.learns_from_anomalies else None
            terms = loop.gradient_step(model, windows.to(device), optimizer, "fp32", drawn, gradient_clip=1.0)
            model.after_optimizer_step(progress)
            found[f"loss at {progress}"] = float(terms["loss"].detach())
    model.eval()
    if model.fits_statistics:
        with torch.inference_mode():
            model.fit_statistics(batch.to(device) for batch in windows.split(4))
    if not model.scores_anomalies:
        return found
    calibration = fit_calibration(model, normal_sources([spec], model, "--data"), spec,
                                  CalibrationOptions(smoothing=1, batch_size=16), progress=False)
    found["threshold"] = calibration.threshold
    payload = {"format": FORMAT, "model": model.name, "params": asdict(model.config), "state_dict": model.state_dict()}
    scorer = Scorer(payload, threads=1, device=device, reference=calibration.reference)
    batch = _first_batch(scorer, spec)
    found.update({key: value for key, value in scorer.score(batch).items() if key in ("score", "map")})
    return found


def _first_batch(scorer: Scorer, spec: str) -> WindowBatch:
    model = scorer.model
    source = open_sources(spec, still_images=model.window_length == 1)[0]
    items = window_batches(source.frames(), source.stream_id, model.window_length, 8, model.image_size, model.channels)
    return next(item for item in items if isinstance(item, WindowBatch) and item.valid.any())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_fits_calibrates_and_scores_on_another_device(name, still_folder, sample_clip):
    windows, spec = _data(name, still_folder, sample_clip)
    on_cpu_run = _train_fit_calibrate_score(name, torch.device("cpu"), windows, spec)
    with values_on_meta():
        on_device_run = _train_fit_calibrate_score(name, META, windows, spec)
    assert on_device_run.keys() == on_cpu_run.keys() and on_cpu_run
    for key, value in on_cpu_run.items():  # the same computation, only elsewhere
        np.testing.assert_allclose(on_device_run[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def _planted_zeros(monkeypatch) -> None:
    """A bug planted in DMAD's forward: ``torch.zeros(n)`` without ``device=`` (harmless on the CPU)."""
    identity = DMAD._identity_grid

    def planted(like: torch.Tensor) -> torch.Tensor:
        return identity(like) + torch.zeros(like.shape[-1], 2)

    monkeypatch.setattr(DMAD, "_identity_grid", staticmethod(planted))


def test_a_tensor_made_without_device_fails_here_and_passes_on_the_cpu(monkeypatch, shipped_checkpoint, sample_clip,
                                                                       still_folder):
    """The proof that the check can fail: a planted ``torch.zeros(n)`` without ``device=`` in DMAD's
    forward changes nothing on the CPU, and fails the device check, in the Scorer and in training."""
    cpu = Scorer(str(shipped_checkpoint), threads=1, device="cpu")
    batch = _first_batch(cpu, str(sample_clip))
    clean = cpu.score(batch)["score"]
    _planted_zeros(monkeypatch)
    np.testing.assert_array_equal(cpu.score(batch)["score"], clean)  # invisible on the CPU
    windows, spec = _data("dmad", still_folder, sample_clip)
    with values_on_meta():
        scorer = Scorer(str(shipped_checkpoint), threads=1, device=META)
        with pytest.raises(DeviceMixUp, match=r"a cpu tensor of shape \(128, 2\)"):
            scorer.score(batch)
        with pytest.raises(DeviceMixUp, match=r"a cpu tensor of shape \(32, 2\)"):
            _train_fit_calibrate_score("dmad", META, windows, spec)


def test_the_shipped_model_scores_the_same_on_another_device(shipped_checkpoint, sample_clip):
    cpu = Scorer(str(shipped_checkpoint), threads=1, device="cpu")
    batch = _first_batch(cpu, str(sample_clip))
    expected = cpu.score(batch)
    with values_on_meta():
        scorer = Scorer(str(shipped_checkpoint), threads=1, device=META)
        assert scorer.device == META and next(scorer.model.parameters()).device == META
        got = scorer.score(batch)
    for key in ("score", "map", "term_gradient_excess"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


# --- the training loop and checkpoints ----------------------------------------------------------------

def test_training_on_another_device_writes_cpu_checkpoints_that_resume(tmp_path, sample_clip, monkeypatch):
    """The loop itself on the device (batches moved there, calibration, a checkpoint per epoch), with
    the same losses as on the CPU; its checkpoints hold CPU tensors only, load on the CPU and resume."""
    from anomstream.pipeline.config import parse_config

    def run(device: torch.device, folder: str, epochs: int = 1, resume: bool = False) -> list[float]:
        """The losses logged, one per epoch."""
        monkeypatch.setattr(loop, "choose_device", lambda requested, option: device)
        config = parse_config({"model": {"name": "dmad", **asdict(TINY_DMAD)},
                               "train": {"data": str(sample_clip), "epochs": epochs, "batch_size": 16, "seed": 3,
                                         "threads": 1, "output_dir": str(tmp_path / folder)}})
        loop.train(config, resume=resume, progress=False)
        records = [json.loads(line) for line in (tmp_path / folder / "train_log.jsonl").read_text().splitlines()]
        return [record["loss"] for record in records if "loss" in record]

    on_cpu_loss = run(torch.device("cpu"), "cpu")
    with values_on_meta():
        on_device_loss = run(META, "meta")
    assert on_device_loss == pytest.approx(on_cpu_loss, rel=1e-5) and len(on_cpu_loss) == 1
    for name in ("last.pt", "model.pt"):
        payload = read_checkpoint(tmp_path / "meta" / name)
        tensors = [t for t in tree_flatten(payload)[0] if isinstance(t, torch.Tensor)]
        assert tensors and all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors), name
    model, payload = load_model(tmp_path / "meta" / "model.pt", expected_model="dmad")
    assert payload["calibration"]["frames"] == 176 and next(model.parameters()).device.type == "cpu"
    assert len(run(torch.device("cpu"), "meta", epochs=2, resume=True)) == 2  # trained there, resumed here


def test_checkpoints_are_written_with_cpu_tensors(tmp_path):
    model_class, config = MODELS["dmad"]
    with values_on_meta():
        model = model_class(config).to(META)
        assert next(model.parameters()).device == META
        save_checkpoint(tmp_path / "m.pt", model, {"optimizer": {"state": {0: {"step": torch.ones(2, device=META)}}}})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # no map_location: CPU tensors or it fails
    assert payload["optimizer"]["state"][0]["step"].tolist() == [1.0, 1.0]
    moved = on_cpu({"a": [torch.ones(1, requires_grad=True)], "b": (2, "c")})
    assert torch.equal(moved["a"][0], torch.ones(1)) and not moved["a"][0].requires_grad and moved["b"] == (2, "c")


# --- --device ------------------------------------------------------------------------------------------

def test_device_names_and_their_one_line_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(None) == choose_device("auto") == choose_device("cpu") == torch.device("cpu")
    with pytest.raises(AnomstreamError) as error:
        choose_device("gpu")
    assert str(error.value) == "--device gpu: one of auto, cpu, cuda, cuda:N"
    with pytest.raises(AnomstreamError) as error:
        choose_device("cuda", "train.device")
    assert str(error.value) == "train.device cuda: torch sees no CUDA device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_device("auto") == torch.device("cuda") and choose_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(AnomstreamError) as error:
        choose_device("cuda:2")
    assert str(error.value) == "--device cuda:2: torch sees 1 CUDA device (cuda:0)"


def test_autocast_takes_the_device_type():
    assert precision_context("bf16", "cpu").device == "cpu" and precision_context("bf16", "cpu").fast_dtype == torch.bfloat16
    with warnings.catch_warnings():  # without CUDA here, torch warns that it disables this one
        warnings.simplefilter("ignore")
        assert precision_context("bf16", torch.device("cuda")).device == "cuda"
    with pytest.raises(ValueError, match="no autocast on device type 'meta'"):
        precision_context("bf16", META)
    with precision_context("fp32", META):  # fp32 on such a device: a plain region
        pass


def test_the_identity_grid_stays_float32_under_bf16():
    """Made in bf16 (a prototype's dtype under autocast) the 128 px identity grid is off by up to 0.18 px
    (0.12 px of rounding, the rest linspace's steps in bf16); DMAD makes it in float32."""
    from anomstream.models.blocks import coordinate_channels

    like = torch.zeros(1, 1, 128, 128, dtype=torch.bfloat16)
    exact = coordinate_channels(like, torch.float32)[:, :2].permute(0, 2, 3, 1)
    rounded = coordinate_channels(like)[:, :2].permute(0, 2, 3, 1).float()
    assert float((rounded - exact).abs().max()) * 127 / 2 > 0.15  # px at 128 px: why it matters
    grid = DMAD._identity_grid(like)
    assert grid.dtype == torch.float32 and torch.equal(grid, exact)


@pytest.mark.parametrize("argv", [["train", "c.yaml"], ["calibrate", "m.pt", "--data", "n.mp4"], ["bench"],
                                  ["score", "a.mp4", "--out", "s.zarr"], ["live", "camera:0", "--out", "s.zarr"]])
def test_every_command_that_runs_a_model_takes_device(argv):
    assert cli.build_parser().parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"
    assert not hasattr(cli.build_parser().parse_args(argv), "device")  # not given: the config's, else auto


@pytest.mark.parametrize("argv", [["calibrate", "CKPT", "--data", "CLIP"], ["score", "CLIP", "--out", "OUT"],
                                  ["train", "CONFIG"], ["live", "CLIP", "--out", "OUT"]])
def test_a_device_that_is_not_there_is_one_line_before_any_work(argv, monkeypatch, capsys, tmp_path,
                                                                shipped_checkpoint, sample_clip):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    given = {"CKPT": str(shipped_checkpoint), "CLIP": str(sample_clip), "OUT": str(tmp_path / "s.zarr"),
             "CONFIG": str(REPO / "configs" / "ped2_dmad_cpu.yaml")}
    argv = [given.get(a, a) for a in argv]
    assert cli.main([*argv, "--device", "gpu"]) == 2
    assert capsys.readouterr().err == "error: --device gpu: one of auto, cpu, cuda, cuda:N\n"
    if argv[0] in ("train", "calibrate"):  # in this process: torch is asked
        assert cli.main([*argv, "--device", "cuda"]) == 2
        assert capsys.readouterr().err == "error: --device cuda: torch sees no CUDA device\n"
    assert not (tmp_path / "s.zarr").exists()


# --- score and live: where the replicas go ---------------------------------------------------------------

@pytest.mark.parametrize(("device", "gpus", "backend", "refusal"), [
    ("auto", [0.0], "auto", None), ("cpu", [1.0], "onnxruntime", None), ("cuda", [1.0], "auto", None),
    ("cuda:1", [2.0], "torch", "--device cuda:1: a replica scores on the GPU Ray gives it, not on one chosen by number; "
                               "pass --device cuda"),
    ("cuda", [0.0, 0.0], "torch", "--device cuda: the Ray cluster has no GPU; pass --device cpu or auto"),
    ("cuda", [0.25], "torch", "--device cuda: the Ray cluster has 0.25 GPU, less than score.gpu_fraction 0.5; pass "
                              "--device cpu or auto"),
    ("cuda", [1.0], "openvino", "--device cuda: --backend openvino scores on the CPU; pass --backend torch or auto"),
])
def test_score_device_against_the_cluster(device, gpus, backend, refusal):
    settings = ScoreSection(device=device, backend=backend)
    if refusal is None:
        driver_run.check_replica_device(settings, gpus)
        return
    with pytest.raises(AnomstreamError) as refused:
        driver_run.check_replica_device(settings, gpus)
    assert str(refused.value) == refusal


def test_device_cpu_asks_ray_for_no_gpu(monkeypatch):
    """On a cluster with a GPU: auto and cuda give each replica a GPU fraction, cpu a share of the CPUs;
    with cpu, replicas that would not fit the GPU are not refused."""
    monkeypatch.setattr(driver_run.ray, "cluster_resources", lambda: {"GPU": 1.0, "CPU": 4.0})
    for device, asks_gpu in (("auto", True), ("cuda", True), ("cpu", False)):
        options, threads = driver_run._replica_options(ScoreSection(device=device, replicas=2), helper_cpus=1.0)
        assert ("num_gpus" in options) is asks_gpu and (threads is None) is asks_gpu, device
    driver_run.check_gpu_placement(ScoreSection(device="cpu", replicas=3), [1.0])
    with pytest.raises(AnomstreamError, match="--replicas 3"):
        driver_run.check_gpu_placement(ScoreSection(device="auto", replicas=3), [1.0])


@pytest.fixture(scope="module")
def gpu_node():
    """One loopback Ray node with 2 CPUs that reports 1 GPU (a label: torch sees none here)."""
    from anomstream.pipeline.driver.local_cluster import start_local_cluster

    node = start_local_cluster(nodes=1, cpus_per_node=2, gpus_per_node=1)
    yield node
    node.shutdown()


def test_score_device_on_a_cluster_with_a_gpu(gpu_node, ped2, tmp_path):
    """--device cpu: 3 replicas on a node whose 1 GPU holds 2 of them run on its CPUs and say so;
    --device cuda: the replicas get their GPU fraction and, torch seeing no GPU, the run ends in one line."""
    clip = first_frames(ped2, "01", 24, tmp_path / "input")
    command = [sys.executable, "-m", "anomstream.pipeline.cli", "score", str(clip), "--address", gpu_node.address, "--quiet",
               "--backend", "torch", "--replicas", "3"]
    placed = subprocess.run([*command, "--out", str(tmp_path / "cpu.zarr"), "--device", "cpu"], cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert placed.returncode == 0, placed.stderr
    store = zarr.open_group(str(tmp_path / "cpu.zarr"), mode="r")
    assert store["01"].attrs["written"] == 24
    assert [replica["device"] for replica in store.attrs["replicas"]] == ["cpu"] * 3
    refused = subprocess.run([*command[:-1], "2", "--out", str(tmp_path / "cuda.zarr"), "--device", "cuda"], cwd=REPO,
                             capture_output=True, text=True, timeout=240)
    assert (refused.returncode, refused.stderr) == (2, "error: --device cuda: torch sees no CUDA device\n")


def test_reference_maps_go_where_the_model_goes_and_are_no_weights(shipped_checkpoint):
    """A calibration's reference maps are DMAD buffers: ``.to(device)`` moves them with the weights
    (not copied to the device per batch), and checkpoints (state_dict) stay without them."""
    model, _ = load_model(str(shipped_checkpoint))
    weights = set(model.state_dict())
    maps = np.random.default_rng(0).random((2, model.image_size, model.image_size), dtype=np.float32)
    set_reference_maps(model, {"gradient_difference": maps[0], "gradient_difference_scale": maps[1]})
    assert {"reference_gradient", "reference_gradient_scale"} <= set(dict(model.named_buffers()))
    assert set(model.state_dict()) == weights
    with values_on_meta():
        model.to(META)
        assert model.reference_gradient.device == META and model.reference_gradient_scale.device == META
