"""Building the processor from a checkpoint folder in several threads at once (the features stage's thread
fan-out): each thread gets a processor. transformers' lazy module resolves ``Qwen2_5OmniProcessor`` on first
use and is not thread-safe; unguarded, 4 threads in a fresh interpreter failed with ``ImportError: cannot
import name 'Qwen2_5OmniProcessor'`` in nearly every run (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RACE = textwrap.dedent("""
    import json, sys, threading
    from omni_r1.models.processor import build_processor
    results = []
    def build():
        try:
            processor = build_processor(sys.argv[1], min_pixels=784, max_pixels=50176)
            results.append(type(processor).__name__)
        except Exception as err:  # the test reports what each thread hit
            results.append(f"{type(err).__name__}: {err}")
    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results))
""")


def test_four_threads_build_the_processor_from_one_checkpoint_folder(tmp_path: Path) -> None:
    from omni_r1.models.processor import build_processor

    folder = tmp_path / "checkpoint"
    build_processor("builtin:tiny", min_pixels=784, max_pixels=50176,
                    cache_dir=tmp_path / "tokenizers").save_pretrained(str(folder))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]), "HF_HUB_OFFLINE": "1"}
    # A fresh interpreter: nothing of transformers is resolved yet, as in a stage process.
    proc = subprocess.run([sys.executable, "-c", RACE, str(folder)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["Qwen2_5OmniProcessor"] * 4
