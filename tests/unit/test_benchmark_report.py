"""The benchmark harness's bookkeeping that needs no server: the S3 server's
CPU in the report, and finding a started server's processes."""

import os
import subprocess
import sys
import time
import types

from benchmarks import procstat
from benchmarks import report as rpt
from benchmarks.run import server_pids

META = {
    "server": "swift", "endpoint": "http://127.0.0.1:1", "scale": "small", "repeat": 2,
    "fs": ["objectfs", "s3fs"], "workloads": ["append"], "started": "t0", "finished": "t1",
    "elapsed_min": 1.0, "interrupted": None, "unavailable": {}, "notes": [],
    "boto3_config": "-", "untar_desc": "-", "size_labels": {"append_base": "10 MiB",
                                                             "append": "1 MiB"},
    "env": {}, "command": "python benchmarks/run.py",
}


def sample(fs: str, rep: int, server_cpu: float | None) -> dict:
    return {"fs": fs, "workload": "append", "rep": rep, "times": {"close": 0.1, "durable": 0.2},
            "cpu": 0.5, "rss_kb": 1024, "app_cpu": 0.0, "server_cpu": server_cpu,
            "error": None, "extra": {}}


def test_server_cpu_is_a_median_per_filesystem_and_a_table():
    samples = [sample("objectfs", 1, 1.0), sample("objectfs", 2, 3.0),
               sample("s3fs", 1, 4.0), sample("s3fs", 2, 6.0)]
    summary = rpt.Summary(META, samples)
    assert summary.to_json()["server_cpu_s"]["append"] == {"objectfs": 2.0, "s3fs": 5.0}
    md = rpt.markdown(summary, None)
    table = md.split("## S3 server CPU seconds", 1)[1]
    assert "| append | 2.00 | 5.00 |" in table


def test_no_server_table_when_the_server_was_not_metered():
    samples = [sample("objectfs", 1, None), sample("s3fs", 1, None)]
    summary = rpt.Summary(META, samples)
    assert "S3 server CPU" not in rpt.markdown(summary, None)
    assert summary.to_json()["server_cpu_s"]["append"] == {"objectfs": None, "s3fs": None}


def test_server_pids_come_from_the_process_or_the_pid_files(tmp_path):
    assert server_pids(types.SimpleNamespace(proc=types.SimpleNamespace(pid=42))) == [42]
    run = tmp_path / "run"
    run.mkdir()
    (run / "proxy.pid").write_text("101\n")
    (run / "object.pid").write_text("102\n")
    (run / "broken.pid").write_text("")
    server = types.SimpleNamespace(data_dir=str(tmp_path))
    assert sorted(server_pids(server)) == [101, 102]
    assert server_pids(types.SimpleNamespace(endpoint="http://127.0.0.1:9")) == []


def test_cpu_of_several_process_trees_adds_up():
    # two children each burn 0.3 s of CPU, then wait
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", busy + "input()"], stdin=subprocess.PIPE)
             for _ in range(2)]
    pids = [p.pid for p in procs]
    try:
        deadline = time.monotonic() + 20
        while procstat.cpu_seconds_all(pids) < 0.55 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert procstat.cpu_seconds_all(pids) >= 0.55
        assert procstat.cpu_seconds_all(pids[:1]) < procstat.cpu_seconds_all(pids)
        assert procstat.cpu_seconds_all([]) == 0
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


def test_big_dir_commands_count_entries_sizes_and_stored_modes(tmp_path):
    """The big_dir workload's ls -l, find and du, run on a local directory:
    the entries, the total size, and how many files ls shows with the mode
    and owner stored for them; a wrong count is the sample's error."""
    from benchmarks import child
    from benchmarks.run import parse_args
    d = tmp_path / "big"
    d.mkdir()
    for i in range(5):
        p = d / f"f{i:05d}"
        p.write_bytes(b"x" * 8192)   # more than the directory's own size
        p.chmod(0o640 if i else 0o644)   # one shown otherwise
    a = dict(mode="fs", root=str(tmp_path), dir="big", count=5, fsize=8192)
    uid, gid = os.getuid(), os.getgid()
    r = child.op_ls(dict(a, perms="-rw-r-----", uid=uid, gid=gid))
    assert r["entries"] == 5 and r["shown_as_stored"] == 4 and r["error"] is None
    assert child.op_ls(dict(a, perms="-rw-r-----", uid=uid + 1, gid=gid))["shown_as_stored"] == 0
    assert child.op_find(a)["entries"] == 5 and child.op_find(a)["error"] is None
    assert child.op_du(a)["total"] >= 5 * 8192 and child.op_du(a)["error"] is None
    (d / "f00000").unlink()
    assert "4 entries" in child.op_ls(a)["error"] and "4 entries" in child.op_find(a)["error"]
    assert "expected 40960" in child.op_du(a)["error"]
    # asked for by name only: the default run is the one the README quotes
    assert "big_dir" not in parse_args([]).only
    assert "big_dir" in parse_args(["--only", "big_dir"]).only
