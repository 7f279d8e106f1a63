"""``stages.common.exit_process``: a stage process ends with its code, its atexit handlers run and its streams are
flushed, and a live non-daemon thread is still joined (the fast exit only skips CPython's module teardown)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent("""
        import atexit, sys, threading, time
        from pathlib import Path
        from stages.common import exit_process
        out = Path(sys.argv[1])
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        sys.stdout.write("buffered line without a newline")
    """) + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    return subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_code_the_handlers_and_the_streams_survive_the_fast_exit(tmp_path: Path) -> None:
    proc = _run("exit_process(2)", tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == "buffered line without a newline"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_live_worker_thread_is_joined_by_the_normal_exit(tmp_path: Path) -> None:
    proc = _run("""
        def work():
            time.sleep(0.5)
            (out / "thread").write_text("finished")
        threading.Thread(target=work).start()
        exit_process(0)
    """, tmp_path)
    assert proc.returncode == 0
    assert (tmp_path / "thread").read_text() == "finished" and (tmp_path / "atexit").read_text() == "ran"
