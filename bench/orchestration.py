"""Benchmark: what orchestration costs on the data half (ingest, validate, shard, features), in one run.

Run it from the repository root (``make bench`` runs the default)::

    .venv/bin/python bench/orchestration.py               # 3 short synthetic videos, direct vs dvc repro vs flow
    .venv/bin/python bench/orchestration.py --videos 20   # the demo's 20 videos
    .venv/bin/python bench/orchestration.py --tiny        # 2 videos of 1 s, no flow: a smoke run

What is measured
----------------
- The videos: ``omni_r1.data.synthetic.generate`` in the plain video layout, ``--videos`` clips of
  ``--seconds`` at the demo's 256x192, 10 fps (params.yaml ``synth``), made once before any timing.
  Params are the repository's ``params.yaml`` with ``data.root`` and ``data.format`` pointing at them.
- direct: one fresh Python process that calls the four stage functions (``stages.<name>.main``, each a
  thin wrapper over its library call) one after another on tmp paths: what a user's own script costs,
  imports paid once. The script stamps the clock after its last call, so its interpreter teardown is
  measured apart: CPython's final garbage collection over everything great-expectations, torch and
  transformers loaded takes 2.0-2.8 s here. The stage processes skip that teardown
  (``stages.common.exit_process``), so the figure compared is the direct run without it: the same work
  on both sides, and no credit for skipping an exit the direct script could skip too.
- dvc: ``omni-r1 prepare``'s project (``flows/project.py``: dvc.yaml's data stages in a fresh folder)
  run by ``dvc repro``: DVC's start, hashing and lock file, and one Python process per stage, each
  importing what its own work needs.
- flow (unless ``--no-flow``): the same project through ``python -m flows.pipeline``: one Prefect task
  per stage, each a ``dvc repro --single-item``, against one ephemeral Prefect API started for the run
  (or the server at ``PREFECT_API_URL``); its start-up is inside the figure, as a user pays it.
- Bytecode: the runs keep Python's bytecode cache (``PYTHONDONTWRITEBYTECODE`` is dropped from their
  environment, and the repository's sources are compiled once before timing), as on a machine where
  nobody set that variable. With it set, every stage process compiles the project's modules again
  (0.1-0.3 s a process), which a one-process script pays once.
- Each is run ``--repeats`` times in turn into fresh folders; medians are compared. The outputs of
  the three are checked to hold the same shards (manifest sha256s). CPU seconds of each (children
  included) are printed too: on a shared machine wall time swings, CPU time much less.
- The last line is the DVC overhead ratio (wall time through ``dvc repro`` / the direct run without its
  teardown), the issue's target being at most 1.2 on 3 short videos and at most 1.05 on the demo's 20:
  ``ratio dvc/direct = 1.32 (dvc 10.4 s, direct 7.8 s, 3 videos x 60 frames; flow/direct 3.04)``.
  The line before it compares ``dvc repro`` with the plain script, teardown included.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("ingest", "validate", "shard", "features")
# The direct path, run in a fresh process: the four stage functions on the prepared project's paths.
DIRECT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from stages import features, ingest, shard, validate
    params, root, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    common = ["--params", params]
    steps = [
        (ingest, ["--root", root, "--out", out / "interim/manifest.parquet", "--metrics", out / "metrics/ingest.json"]),
        (validate, ["--root", root, "--manifest", out / "interim/manifest.parquet",
                    "--out", out / "interim/validated.parquet", "--quarantine", out / "interim/quarantine.json",
                    "--metrics", out / "metrics/validate.json"]),
        (shard, ["--root", root, "--manifest", out / "interim/validated.parquet", "--out", out / "shards",
                 "--metrics", out / "metrics/shard.json"]),
        (features, ["--shards", out / "shards", "--out", out / "features", "--metrics", out / "metrics/features.json"]),
    ]
    for stage, argv in steps:
        code = stage.main([*common, *map(str, argv)])
        if code != 0:
            sys.exit(f"{stage.__name__} exited {code}")
    import time
    print("work done at", repr(time.time()), flush=True)  # DONE: the interpreter's exit is timed from here
""")
DONE = "work done at"


@dataclass(frozen=True)
class Timing:
    """One measured run: wall seconds and CPU seconds of the processes it started."""

    seconds: float
    cpu: float
    teardown: float = 0.0  # the direct script's interpreter exit, after its last call returned


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], cwd: Path, env: dict[str, str], what: str) -> Timing:
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds, ended = time.perf_counter() - start, time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): `{' '.join(command)}` in {cwd}:\n"
                           f"{proc.stdout[-3000:]}")
    done = [float(line.split()[-1]) for line in proc.stdout.splitlines() if line.startswith(DONE)]
    return Timing(seconds, _children_cpu() - cpu, max(0.0, ended - done[-1]) if done else 0.0)


def _shard_hashes(out: Path) -> list[str]:
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    return sorted(entry["sha256"] for entry in manifest["shards"])


def _env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")])
    for name, value in (("DVC_NO_ANALYTICS", "1"), ("TQDM_DISABLE", "1"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                        ("PREFECT_LOGGING_LEVEL", "WARNING"), ("TOKENIZERS_PARALLELISM", "false"),
                        ("HF_HUB_OFFLINE", "1")):
        env.setdefault(name, value)
    return env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=3, help="synthetic videos (default 3; the demo has 20)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each clip (default 6, as the demo's)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each path (default 1)")
    p.add_argument("--no-flow", dest="flow", action="store_false", help="skip the Prefect flow")
    p.add_argument("--tiny", action="store_true", help="a smoke run: 2 videos of 1 s, 1 repeat, no flow")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the params file (default params.yaml)")
    p.add_argument("--scratch", type=Path, default=None, help="where to work (default: a temporary folder)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from flows.project import default_dvc, write_project
    from omni_r1.config import load_params
    from omni_r1.data.synthetic import SynthSpec, generate

    args = _parser().parse_args(argv)
    if args.tiny:
        args.videos, args.seconds, args.repeats, args.flow = 2, 1.0, 1, False
    if args.videos < 1 or args.repeats < 1 or args.seconds <= 0:
        raise SystemExit("--videos and --repeats must be at least 1, --seconds positive")
    scratch = Path(tempfile.mkdtemp(prefix="omni-r1-orchestration-", dir=args.scratch))
    env = _env()
    env.setdefault("PREFECT_HOME", str(scratch / "prefect"))
    try:
        synth = load_params(args.params).synth
        root = scratch / "raw"
        spec = SynthSpec(videos=args.videos, seed=synth.seed, width=synth.width, height=synth.height, fps=synth.fps,
                         seconds=args.seconds)
        generate(root, "video", spec)
        frames = round(args.seconds * synth.fps)
        print(f"data: {args.videos} synthetic videos x {args.seconds:g} s at {synth.width}x{synth.height}, "
              f"{synth.fps} fps ({frames} frames each) in {root}")
        one, five, _ = os.getloadavg()
        print(f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs")
        # Bytecode for the project's own modules (site-packages has its own from pip), before any timing
        for folder in ("src", "stages", "flows"):
            compileall.compile_dir(REPO / folder, quiet=1)
        dvc = default_dvc()
        runs: dict[str, list[Timing]] = {"direct": [], "dvc": [], **({"flow": []} if args.flow else {})}
        hashes: dict[str, list[str]] = {}
        for repeat in range(1, args.repeats + 1):
            for path in runs:
                out = scratch / f"{path}-{repeat}"
                project = write_project(REPO, out, root, "video", args.params)
                if path == "direct":
                    command = [sys.executable, "-c", DIRECT, str(project / "params.yaml"), str(root), str(out)]
                elif path == "dvc":
                    command = [dvc, "repro", "-q"]
                else:
                    command = [sys.executable, "-m", "flows.pipeline", "--repo", str(out)]
                timing = _timed(command, out, env, path)
                runs[path].append(timing)
                hashes[path] = _shard_hashes(out)
                exit_note = f" (of which {timing.teardown:.2f} s the interpreter's exit)" if path == "direct" else ""
                print(f"repeat {repeat}: {path:<6} {timing.seconds:6.2f} s wall, {timing.cpu:6.2f} CPU s{exit_note}")
                shutil.rmtree(out, ignore_errors=True)
        if len({tuple(h) for h in hashes.values()}) != 1:
            print(f"warning: the paths wrote different shards: {hashes}")
        wall = {path: statistics.median(t.seconds for t in timings) for path, timings in runs.items()}
        cpu = {path: statistics.median(t.cpu for t in timings) for path, timings in runs.items()}
        work = statistics.median(t.seconds - t.teardown for t in runs["direct"])
        print("CPU seconds: " + ", ".join(f"{path} {cpu[path]:.2f}" for path in runs)
              + f"; dvc/direct by CPU {cpu['dvc'] / cpu['direct']:.2f}")
        flow = f"; flow/direct {wall['flow'] / work:.2f}" if "flow" in wall else ""
        print(f"dvc/plain script = {wall['dvc'] / wall['direct']:.2f} (the direct script's own exit included: "
              f"{wall['direct']:.1f} s, of which {wall['direct'] - work:.1f} s teardown)")
        print(f"ratio dvc/direct = {wall['dvc'] / work:.2f} (dvc {wall['dvc']:.1f} s, direct "
              f"{work:.1f} s, {args.videos} videos x {frames} frames{flow})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
