"""The run log (``jaxrnn.training.runlog``): bytes linear in the rows, bounded memory, resume.

A training process's writes are counted by the kernel (``wchar`` of ``/proc/self/io``: every
byte handed to ``write``); an object store's by the in-memory ``bucket`` of ``conftest``, which
keeps every object ever uploaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import pytest
from etils import epath

from jaxrnn.configs import apply_overrides, get_config
from jaxrnn.training import loop, runlog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_COUNTED_RUN = """
import json, sys
from jaxrnn.cli import main
code = main(sys.argv[2:])
with open("/proc/self/io") as f:
    counters = dict(line.split(": ") for line in f.read().splitlines())
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "wchar": int(counters["wchar"])}, f)
"""


def _kept_bytes(workdir) -> int:
    """The bytes of the log's files: its rows and its event files."""
    files = [os.path.join(workdir, "metrics.jsonl")]
    files += [os.path.join(workdir, "tb", name) for name in os.listdir(os.path.join(workdir, "tb"))]
    return sum(os.path.getsize(f) for f in files)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
def test_a_training_process_writes_bytes_linear_in_its_steps(tmp_path):
    sets = ["log_every=1", "hidden_size=8", "test_examples=500"]
    config = apply_overrides(get_config("lstm_sequences"), sets)
    for split in ("train", "test"):  # prepared (and cached) before, so no run writes data
        loop.load_split(config, split)
    written, kept = {}, {}
    for steps in (200, 800):
        workdir, out = tmp_path / f"run{steps}", tmp_path / f"io{steps}.json"
        args = ["train", "--config", "lstm_sequences", "--workdir", str(workdir)]
        args += [a for kv in [*sets, f"num_steps={steps}"] for a in ("--set", kv)]
        done = subprocess.run(
            [sys.executable, "-c", _COUNTED_RUN, str(out), *args],
            env=dict(os.environ, PYTHONPATH=ROOT),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["code"] == 0
        rows = loop.read_metrics(str(workdir))
        assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, steps + 1))
        written[steps], kept[steps] = result["wchar"], _kept_bytes(workdir)
    # 600 more steps of log rows and events cost about what they occupy (each row is written
    # once to its file, each event once to the file and once to tensorboardX's queue pipe),
    # not the rewrite of everything logged so far at each row.
    more_written, more_kept = written[800] - written[200], kept[800] - kept[200]
    assert more_kept > 600 * 100  # a row and its three events take more than 100 bytes
    assert more_written < 4 * more_kept, (written, kept)


def _log_rows(log, steps: range, flush_each: bool) -> None:
    for step in steps:
        log.write(step, "train", {"loss": 1.0 / step, "accuracy": 0.5, "grad_norm": 2.0})
        if flush_each:
            log.flush()  # as if a checkpoint followed every row: the most uploads there can be


def test_an_object_store_receives_bytes_linear_in_the_rows(bucket):
    uploaded, stored = {}, {}
    for n in (400, 1600):
        run = f"gs://bucket/run{n}"
        log = runlog.RunLog(run, 0, n, flush_secs=0)
        _log_rows(log, range(1, n + 1), flush_each=True)
        log.close()
        assert [r["step"] for r in runlog.read_metrics(run)] == list(range(1, n + 1))
        for what in ("metrics/", "tb/"):
            objects = [p for p in epath.Path(run, what).iterdir()]
            uploaded[n, what] = bucket.uploaded_bytes(f"run{n}/{what}")
            stored[n, what] = sum(len(p.read_bytes()) for p in objects)
            # Each byte is uploaded at most PART_WRITES times (rewriting the whole log at
            # each flush would upload it about n / 2 times).
            assert uploaded[n, what] <= runlog.PART_WRITES * stored[n, what]
    rows_ratio = uploaded[1600, "metrics/"] / uploaded[400, "metrics/"]
    assert 3.5 < rows_ratio < 4.5, uploaded
    assert stored[1600, "tb/"] > 3.5 * stored[400, "tb/"]
    assert not [mode for _, mode in bucket.opened if "a" in mode]


def test_the_log_holds_bounded_memory(tmp_path, bucket, monkeypatch):
    monkeypatch.setattr(runlog, "PART_BYTES", 4096)
    log = runlog.RunLog(str(tmp_path / "run"), 0, 10**6)
    _log_rows(log, range(1, 201), flush_each=False)  # warm: imports, tensorboardX's thread
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _log_rows(log, range(201, 2201), flush_each=False)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    log.close()
    # 2000 rows are 200 KB of JSON and more of events: the log keeps none of them.
    assert held < 20_000, held
    # On an object store it keeps the open part, uploaded (and left) once it holds PART_BYTES.
    log = runlog.RunLog("gs://bucket/remote", 0, 10**6, flush_secs=float("inf"))
    _log_rows(log, range(1, 5001), flush_each=False)
    log.close()
    sizes = [len(f.getvalue()) for path, f in bucket.uploads if "remote/" in path]
    assert len(sizes) > 2 * 500_000 / 4096  # rows and events: parts of 4 KiB
    assert max(sizes) < 4096 + 1000  # a part and one write at most


def test_remote_log_flushes_at_most_every_interval(bucket, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(runlog.time, "monotonic", lambda: clock[0])
    run = "gs://bucket/slow"
    log = runlog.RunLog(run, 0, 100)
    log.write(1, "train", {"loss": 1.0})  # the first write flushes
    log.write(2, "train", {"loss": 1.0})
    assert len(runlog.read_metrics(run)) == 1
    clock[0] += runlog.REMOTE_FLUSH_SECS
    log.write(3, "train", {"loss": 1.0})
    assert len(runlog.read_metrics(run)) == 3
    log.write(4, "train", {"loss": 1.0})
    log.flush()
    assert len(runlog.read_metrics(run)) == 4
    log.close()


def _steps(run) -> list[tuple[int, str]]:
    return [(r["step"], r["split"]) for r in runlog.read_metrics(run)]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_resumed_log_drops_the_rows_after_its_checkpoint(where, tmp_path, bucket):
    run = str(tmp_path / "run") if where == "local" else "gs://bucket/log"
    log = runlog.RunLog(run, 0, 30, flush_secs=0)
    for step in (10, 20):
        log.write(step, "train", {"loss": 1.0 / step})
        log.write(step, "test", {"loss": 0.5})
        log.flush()  # separate parts on the object store
    log.write(30, "train", {"loss": 0.25})
    log.write(30, "test", {"loss": 0.25})
    log.close()
    everything = [(10, "train"), (10, "test"), (20, "train"), (20, "test"), (30, "train")]
    assert _steps(run) == everything + [(30, "test")]

    # Resuming at 20: the rows after 20 go, the others stay; the new ones follow.
    log = runlog.RunLog(run, 20, 30, flush_secs=0)
    assert _steps(run) == everything[:4]
    log.write(30, "train", {"loss": 0.125})
    log.close()
    assert _steps(run) == everything
    assert runlog.read_metrics(run)[-1]["loss"] == 0.125

    # A finished run evaluated again: its final test row goes, its train rows stay.
    runlog.RunLog(run, 30, 30).close()
    assert _steps(run) == everything
    # A run that starts over (no checkpoint) drops every row.
    runlog.RunLog(run, 0, 30).close()
    assert _steps(run) == []
    if where == "gs":
        assert {mode for _, mode in bucket.opened} <= {"rb", "wb"}


def test_a_row_cut_off_by_a_kill_is_skipped_then_dropped(tmp_path):
    run = str(tmp_path / "run")
    log = runlog.RunLog(run, 0, 30, flush_secs=0)
    _log_rows(log, range(1, 4), flush_each=False)
    log.close()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "tr')  # the process died inside this write
    assert [r["step"] for r in runlog.read_metrics(run)] == [1, 2, 3]
    log = runlog.RunLog(run, 3, 30, flush_secs=0)
    _log_rows(log, range(4, 6), flush_each=False)
    log.close()
    assert [r["step"] for r in runlog.read_metrics(run)] == [1, 2, 3, 4, 5]


def test_the_object_store_parts_continue_after_a_resume(bucket, monkeypatch):
    monkeypatch.setattr(runlog, "PART_WRITES", 2)
    run = "gs://bucket/parts"
    log = runlog.RunLog(run, 0, 100, flush_secs=0)
    _log_rows(log, range(1, 9), flush_each=False)  # parts of 2 rows: 1-2, 3-4, 5-6, 7-8
    log.close()
    parts = lambda: sorted(p.name for p in epath.Path(run, "metrics").iterdir())  # noqa: E731
    assert parts() == ["000000.jsonl", "000001.jsonl", "000002.jsonl", "000003.jsonl"]
    log = runlog.RunLog(run, 3, 100, flush_secs=0)  # cuts part 1 after step 3, drops 2 and 3
    assert parts() == ["000000.jsonl", "000001.jsonl"]
    _log_rows(log, range(4, 7), flush_each=False)
    log.close()
    assert parts() == ["000000.jsonl", "000001.jsonl", "000002.jsonl", "000003.jsonl"]
    assert [r["step"] for r in runlog.read_metrics(run)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_events_are_tensorboardx_records_with_a_purge_marker_on_resume(
    where, tmp_path, bucket, event_files
):
    run = str(tmp_path / "run") if where == "local" else "gs://bucket/events"
    log = runlog.RunLog(run, 0, 30)
    _log_rows(log, range(1, 31), flush_each=True)
    log.close()
    log = runlog.RunLog(run, 20, 30)  # at once: within the same second as the first
    _log_rows(log, range(21, 31), flush_each=False)
    log.close()
    first, second = event_files(run)  # one file per invocation, in order

    def content(events):
        out = []
        for e in events:
            what = e.WhichOneof("what")
            if what == "summary":
                out += [(e.step, v.tag, v.simple_value) for v in e.summary.value]
            elif what == "session_log":
                out.append((e.step, "session_log", e.session_log.status))
            else:
                out.append((e.step, what, e.file_version))
        return out

    def scalars(steps):
        return [
            (s, tag, value)
            for s in steps
            for tag, value in (
                ("train/loss", 1.0 / s),
                ("train/accuracy", 0.5),
                ("train/grad_norm", 2.0),
            )
        ]

    def approx(rows):  # simple_value is a float32
        return [(s, t, round(v, 5) if isinstance(v, float) else v) for s, t, v in rows]

    got = content(first)
    assert got[:3] == [(0, "file_version", "brain.Event:2")] * 2 + [(0, "session_log", 1)]
    assert approx(got[3:]) == approx(scalars(range(1, 31)))
    got = content(second)
    assert got[:3] == [
        (0, "file_version", "brain.Event:2"),
        (20, "file_version", "brain.Event:2"),
        (20, "session_log", 1),  # START: TensorBoard hides the steps >= 20 of earlier files
    ]
    assert approx(got[3:]) == approx(scalars(range(21, 31)))


def test_event_files_are_written_without_importing_torch(tmp_path):
    """tensorboardX's writer imports torch where torch is installed (seconds of a run's
    start, for tensors jaxrnn never logs): the log imports it with torch kept out, and
    ``import torch`` works again after. A stand-in torch package on the path shows imports."""
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("LOADED = True\n")
    run = tmp_path / "run"
    script = f"""
import json, sys
sys.path.insert(0, {str(site)!r})
from jaxrnn.training import runlog
log = runlog.RunLog({str(run)!r}, 0, 3, flush_secs=0)
log.write(1, "train", {{"loss": 0.5}})
log.close()
during = "torch" in sys.modules
import torch
print(json.dumps({{"torch_during_log": during, "torch_after": torch.LOADED}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "torch_during_log": False,
        "torch_after": True,
    }
    assert list((run / "tb").glob("events.out.tfevents.*"))
