"""The house's layout holds: no import circle between files, `models/` imports nothing of the
pipeline, only the driver (and the CLI above it) imports the Ray actors of `workers/`, and the
`pipeline/` top level stays small. Imports inside functions count too.

The folders are installed beneath the package ``anomstream`` (pyproject's package-dir; its own
module is pipeline/api/__init__.py) and import one another relatively: ``from ...models.base``
in pipeline/driver/run.py is models.base here (the repo's root plays ``anomstream``)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "models", "workers", "configs")
MAY_IMPORT_WORKERS = ("pipeline.driver", "pipeline.cli")


API = REPO / "pipeline" / "api" / "__init__.py"  # the package ``anomstream`` itself: the repo's root


def _package_parts(path: Path) -> list[str]:
    """The package a file's relative imports start from (the root is [])."""
    if path == API:
        return []
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts[:-1]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """First-party modules a file imports (``from a.b import c`` counts a.b.c when c is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            start = _package_parts(path)
            base = ".".join(start[:len(start) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        out.update(name for name in names if name.split(".")[0] in PACKAGES and name in modules)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node], _ = 2, stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_between_files():
    assert _cycle(_graph()) is None


def test_models_import_nothing_of_the_pipeline():
    breaks = {m: sorted(t for t in targets if t.startswith(("pipeline", "workers")))
              for m, targets in _graph().items() if m.startswith("models")}
    assert {m: t for m, t in breaks.items() if t} == {}


def test_only_the_driver_imports_the_ray_actors():
    importers = {m for m, targets in _graph().items() if any(t.startswith("workers") for t in targets)}
    outside = {m for m in importers if not m.startswith(("workers", *MAY_IMPORT_WORKERS))}
    assert outside == set()
    assert "pipeline.driver.run" in importers  # the rule is checked against real imports


def test_the_packages_import_one_another_relatively_and_are_all_installed():
    """An absolute ``import pipeline...`` would find the repo's folder only where it happens to be
    on sys.path (never once installed); pyproject lists every package folder beneath anomstream."""
    absolute = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            absolute += [f"{path.relative_to(REPO)}: {name}" for name in names if name.split(".")[0] in PACKAGES]
    assert absolute == []
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"anomstream." + ".".join(path.parent.relative_to(REPO).parts) for package in PACKAGES
               for path in (REPO / package).rglob("__init__.py") if path != API}
    assert listed == folders | {"anomstream"}


def test_pipeline_top_level_stays_small():
    top = sorted(p.name for p in (REPO / "pipeline").glob("*.py"))
    assert len(top) <= 12, top


def test_writer_and_decoder_start_without_torch_and_a_replica_without_the_still_models():
    """Actor start-up is import time: the writer and decoder processes need neither torch nor a
    model; a DMAD replica needs torch but not torchvision (the still models' backbones)."""
    import subprocess
    import sys

    probe = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
             "print(' '.join(m for m in ('torch', 'torchvision', 'anomstream.models.dmad') if m in sys.modules))")
    loaded = {module: subprocess.run([sys.executable, "-c", probe, module], cwd=REPO, capture_output=True, text=True,
                                     check=True).stdout.split()
              for module in ("anomstream.workers.writer", "anomstream.workers.decoder")}
    assert loaded == {"anomstream.workers.writer": [], "anomstream.workers.decoder": []}
    replica = ("import sys; from anomstream.pipeline.checkpoint import load_model; load_model(sys.argv[1]); "
               "print('torchvision' in sys.modules)")
    shipped = REPO / "configs" / "weights" / "ped2_dmad_cpu.pt"
    assert subprocess.run([sys.executable, "-c", replica, str(shipped)], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_a_calibrated_runs_writer_config_unpickles_without_torch(tmp_path):
    """What the driver sends a writer (its WriterConfig, with the calibration) must not pull torch
    into the writer's process as Ray unpickles it: a tensor in it cost each writer 1.5 CPU-s at start."""
    import pickle
    import subprocess
    import sys

    import cv2
    import numpy as np

    from anomstream.pipeline.driver.plan import RunPlan
    from anomstream.pipeline.driver.run import _prepare, _writer_config

    frames = tmp_path / "clip"
    frames.mkdir()
    for index in range(3):
        cv2.imwrite(str(frames / f"{index:03d}.png"), np.full((24, 32, 3), 40 * index, np.uint8))
    plan = RunPlan(specs=[str(frames)], checkpoint=str(REPO / "configs" / "weights" / "ped2_dmad_cpu.pt"),
                   out=tmp_path / "out.zarr", progress=False)
    config = _writer_config(plan, _prepare(plan))
    assert config.calibration is not None and config.events is not None
    (tmp_path / "config.pickle").write_bytes(pickle.dumps(config))
    probe = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb')); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path / "config.pickle")], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip() == "False"
