"""Where a pipeline run's CPU goes (issue 34): CPU seconds per process role over one `score` run.

    python benchmarks/pipeline_cpu.py [--clip ../shared/data/ped2/testing/frames/04] [--streams 8]
        [--backend openvino] [--precision int8] [--replicas 2] [--batch-size 16] [--py-spy FILE]
    python benchmarks/pipeline_cpu.py --idle   # what Ray actors doing nothing take

Runs the Ray pipeline in this process (as ``anomstream score`` does) on the clip repeated as
``--streams`` streams, twice: the first run starts Ray and compiles the graph, the second is
measured. Every process of the run (this driver and Ray's processes, its children) is read with
psutil every 0.2 s; a role's CPU seconds (user + system) are counted over the run report's own
clock (replicas ready to the last frame written), placed back from when the run returned (so the
window also takes in the actors' teardown, a few hundred ms, in place of as much of its start).
Roles come from Ray's process titles (``ray::ReplicaActor``, ``ray::WriterActor``,
``ray::DecodeActor``; Ray's own: raylet, gcs_server, monitors). Prints CPU seconds and
milliseconds per frame per role, the run's fps and the CPU flags;
``--py-spy``: the measured run's stacks too (py-spy's own sampling slows the run several times: its
shares, not its speed). Record the figures with the date in docs/backends.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROLES = ("ReplicaActor", "WriterActor", "DecodeActor", "IdleActor")


def _role(process: psutil.Process) -> str:
    try:
        title = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "gone"
    head = title.split()[0].rsplit("/", 1)[-1]
    for name in ("raylet", "gcs_server", "dashboard", "runtime_env", "log_monitor", "monitor"):
        if name in head or (name in title and "ray::" not in title):
            return f"Ray {name}"
    for role in ROLES:
        if role in title:
            return role
    return "Ray other workers" if "ray::" in title or "default_worker" in title else head[:40]


class CpuSampler(threading.Thread):
    """Reads the CPU time (user + system, seconds) of every process below this one every ``every_s``
    seconds: per pid, its role and a list of (time.monotonic(), CPU seconds)."""

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every_s, self.stopped = every_s, threading.Event()
        self.roles: dict[int, str] = {}
        self.readings: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)

    def _read(self) -> None:
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            role = "driver" if process.pid == me.pid else _role(process)
            if role not in ("Ray other workers", "gone") or process.pid not in self.roles:
                self.roles[process.pid] = role  # an actor's title once it has one; kept when it exits
            self.readings[process.pid].append((time.monotonic(), times.user + times.system))

    def run(self) -> None:
        while not self.stopped.is_set():
            self._read()
            time.sleep(self.every_s)
        self._read()

    def shares(self, start: float) -> dict[str, float]:
        """CPU seconds per role from ``start`` (time.monotonic()) on."""
        out: dict[str, float] = collections.defaultdict(float)
        for pid, readings in self.readings.items():
            before = [cpu for when, cpu in readings if when <= start]
            out[self.roles[pid]] += readings[-1][1] - (before[-1] if before else readings[0][1])
        return dict(out)


def _start_py_spy(path: str) -> subprocess.Popen:
    """py-spy sampling this process and its children from now on (until SIGINT)."""
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--subprocesses", "--nonblocking",
                            "--rate", "200", "--format", "raw", "-o", path], stdout=subprocess.DEVNULL)
    time.sleep(2.0)  # attached
    return spy


def idle_actors(count: int = 3, seconds: float = 10.0) -> None:
    """``--idle``: the CPU that ``count`` Ray actors doing nothing take (Ray's own threads in each
    process; the floor every decoder and writer of a run costs), and Ray's processes beside them, in
    milliseconds of CPU per second over ``seconds``."""
    import ray

    from anomstream.pipeline.backends.verdict import matrix_flags
    from anomstream.pipeline.driver.ray_setup import ensure_ray

    @ray.remote(num_cpus=0)
    class IdleActor:
        def ready(self) -> bool:
            return True

    ensure_ray()
    actors = [IdleActor.remote() for _ in range(count)]
    ray.get([actor.ready.remote() for actor in actors])
    time.sleep(2.0)  # started
    sampler = CpuSampler(every_s=1.0)
    sampler.start()
    start = time.monotonic()
    time.sleep(seconds)
    sampler.stopped.set()
    sampler.join()
    print(f"{count} idle actors over {seconds:.0f} s, {os.cpu_count()} cores, CPU flags {matrix_flags()}")
    for role, cpu in sorted(sampler.shares(start).items(), key=lambda item: -item[1]):
        per = f" ({1000 * cpu / seconds / count:.1f} each)" if role == "IdleActor" else ""
        print(f"{role:24s} {1000 * cpu / seconds:6.1f} ms CPU per s{per}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", default="../shared/data/ped2/testing/frames/04")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--checkpoint", default="configs/weights/ped2_dmad_cpu.pt")
    parser.add_argument("--py-spy", metavar="FILE", help="also sample the measured run's stacks with py-spy "
                        "(--subprocesses, raw format) into FILE")
    parser.add_argument("--idle", action="store_true", help="only the CPU that idle Ray actors take (10 s)")
    args = parser.parse_args()
    if args.idle:
        idle_actors()
        return

    import torch

    from anomstream.pipeline.backends.verdict import matrix_flags
    from anomstream.pipeline.config import ScoreSection
    from anomstream.pipeline.driver.plan import RunPlan
    from anomstream.pipeline.driver.ray_setup import ensure_ray
    from anomstream.pipeline.driver.run import score_sources

    torch.set_num_threads(1)
    ensure_ray()
    folder = Path(tempfile.mkdtemp(prefix="anomstream-cpu-"))
    settings = ScoreSection(batch_size=args.batch_size, replicas=args.replicas, backend=args.backend,
                            precision=args.precision, device="cpu")
    plan = dict(specs=[args.clip] * args.streams, checkpoint=args.checkpoint, settings=settings, mode="overwrite",
                progress=False, max_active_streams=args.replicas + 1)
    try:
        score_sources(RunPlan(out=folder / "warm.zarr", **plan))  # actors started, graphs compiled
        sampler = CpuSampler()
        sampler.start()
        spy = _start_py_spy(args.py_spy) if args.py_spy else None
        report = score_sources(RunPlan(out=folder / "run.zarr", **plan))
        start = time.monotonic() - report.seconds  # the report's clock: replicas ready to the last frame
        sampler.stopped.set()
        sampler.join()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.clip} x {args.streams}: {report.frames} frames in {report.seconds:.2f} s "
          f"({report.frames / report.seconds:.1f} fps), batch {args.batch_size}, {args.replicas} replicas, "
          f"{args.backend} {args.precision}, "
          f"CPU flags {matrix_flags()}; replica busy {[round(b, 3) for b in report.replica_busy]}")
    shares = sampler.shares(start)
    for role, seconds in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"{role:24s} {seconds:7.2f} CPU-s  {1000 * seconds / report.frames:6.2f} ms/frame")
    print(f"{'all':24s} {sum(shares.values()):7.2f} CPU-s  {1000 * sum(shares.values()) / report.frames:6.2f} ms/frame")


if __name__ == "__main__":
    main()
