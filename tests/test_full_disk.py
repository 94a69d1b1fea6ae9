"""A real full disk: searches on a small tmpfs that fills up, then gets space again.

Each scenario runs in its own mount namespace (``unshare -rm``) so that the tmpfs needs no privilege
and disappears with the process. A full disk must give one line and a non-zero exit, leave the
journal readable with every stored record, and the same command must resume once space is free.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCENARIO = textwrap.dedent(
    r"""
    import json, os, subprocess, sys
    from pathlib import Path

    disk, study, out, size, fill = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    steps = []

    def autokd(*args):  # in this process (imports once), as the command line runs it
        import contextlib, io, traceback
        from autokd.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except Exception:
                traceback.print_exc()
                code = 1
        steps.append({"args": list(args), "code": code, "stderr": err.getvalue()})

    def search(trials):
        document = json.loads(Path(study).read_text())
        document["budget"]["trials"] = trials
        path = disk / "study.json"
        path.write_text(json.dumps(document))
        autokd("search", str(path), "--runs-dir", str(disk / "runs"), "--reports-dir", str(disk / "reports"),
               "--no-progress")

    def fill_disk(leave):
        with open(disk / "filler", "wb") as f:
            block = b"\0" * 65536
            try:
                while True:
                    f.write(block)
                    f.flush()
            except OSError:
                pass
        if leave:
            os.truncate(disk / "filler", max(0, os.path.getsize(disk / "filler") - leave))

    if fill == "teacher":  # too small for the teacher's weights from the start
        search(1)
    else:  # a search runs, then the disk fills up (leaving `fill` bytes) and the search is resumed
        search(1)
        fill_disk(int(fill))
        search(2)
    subprocess.run(["mount", "-o", "remount,size=512m", str(disk)], check=True)
    (disk / "filler").unlink(missing_ok=True)
    search(2)
    autokd("report", str(disk / "runs" / "full"), "--reports-dir", str(disk / "reports"))
    from autokd.record import load_records

    records = load_records(disk / "runs" / "full")
    completed = sorted(t.number for t in records.trials if t.completed)
    leftovers = [str(p) for p in disk.rglob("*.partial*")]
    reports = sorted(p.name for p in (disk / "reports" / "full").glob("*")) if (disk / "reports" / "full").exists() else []
    out.write_text(json.dumps({"steps": steps, "leftovers": leftovers, "reports": reports, "completed": completed}))
    """
)


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _unshare_works(), reason="this machine cannot mount a private tmpfs")


def _run(tmp_path: Path, document: dict, size: str, fill: str) -> dict:
    disk = tmp_path / "disk"
    disk.mkdir()
    study = tmp_path / "study.json"
    document["name"] = "full"
    study.write_text(json.dumps(document))
    out = tmp_path / "out.json"
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    command = ["unshare", "-rm", sys.executable, str(script), str(disk), str(study), str(out), size, fill]
    subprocess.run(command, check=True, timeout=600)
    return json.loads(out.read_text())


def _one_line_full_disk(step: dict) -> None:
    lines = step["stderr"].strip().splitlines()
    assert step["code"] == 2, step["stderr"]
    assert lines and lines[-1].startswith("autokd: error: no space left on the device"), step["stderr"]
    assert "Traceback" not in step["stderr"]


def _resumed(result: dict) -> None:
    resumed, report = result["steps"][-2], result["steps"][-1]
    assert resumed["code"] == 0, resumed["stderr"]
    assert report["code"] == 0, report["stderr"]
    assert "index.html" in result["reports"]
    assert not result["leftovers"], "a full disk left .partial files behind"


@pytest.fixture
def quick(tiny_study) -> dict:
    tiny_study["teacher"]["epochs"] = 1
    tiny_study["data"]["train_subsample"] = 400
    return tiny_study


@needs_tmpfs
@pytest.mark.slow
def test_a_disk_too_small_for_the_teacher_is_one_line_then_resumes(tmp_path, quick):
    result = _run(tmp_path, quick, "4m", "teacher")
    _one_line_full_disk(result["steps"][0])
    _resumed(result)


@needs_tmpfs
@pytest.mark.slow
@pytest.mark.parametrize("leave", [0, 20000])
def test_a_disk_that_fills_during_a_search_keeps_the_journal_and_resumes(tmp_path, quick, leave):
    result = _run(tmp_path, quick, "64m", str(leave))
    first, full = result["steps"][0], result["steps"][1]
    assert first["code"] == 0, first["stderr"]
    _one_line_full_disk(full)
    _resumed(result)
    assert len(result["completed"]) == 2 and result["completed"][0] == 0, (
        "a trial stored before the disk filled was lost"
    )
