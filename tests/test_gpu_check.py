"""bench/gpu_check.py's plumbing on a CPU: its commands are ones the stages accept, every check runs
whatever became of the others, checks run side by side and the benchmarks alone after them, a row is
printed and logged the moment its check ends, a hang is cut at its timeout, and the budget (or a
SIGTERM) stops the run with a table that says which check is which."""

import os
import signal
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402

PY = sys.executable
# a command that notes in a file when it starts and ends: stamp_script FILE LABEL SECONDS
STAMP = """import sys, time
path, label, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
open(path, "a").write(f"{label} start {time.time()}\\n")
time.sleep(seconds)
open(path, "a").write(f"{label} end {time.time()}\\n")
print(label, "done", flush=True)
"""
# a command that starts a grandchild, writes both pids, and sleeps: both must die at the budget
SPAWNS = """import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(f"{child.pid} {__import__('os').getpid()}")
time.sleep(60)
"""


class Stamped:
    """A stdout stand-in that keeps each line with the time it was written."""

    def __init__(self, on_line=None):
        self.lines, self.on_line = [], on_line

    def write(self, text):
        for line in text.splitlines():
            self.lines.append((time.monotonic(), line))
            if self.on_line:
                self.on_line(line)

    def flush(self):
        pass

    def row(self, name):
        return next((t, line) for t, line in self.lines if f"| {name} |" in line)


def stamps(path):
    """{(label, "start"/"end"): time} from a stamp file, each label once."""
    found = {}
    for line in open(path):
        label, what, at = line.split()
        assert (label, what) not in found, f"{label} ran twice"
        found[label, what] = float(at)
    return found


def alive(pid):
    """Running (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_the_dry_run_checks_and_shows_every_command(tmp_path, capsys):
    assert gpu_check.main(["--dry", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    live, final = out.split("in the order of the checks:")
    found = gpu_check.checks()
    assert len(found) >= 12
    # each row as its check ended (with the time it ended), then the whole table in the checks' order
    assert len([x for x in live.splitlines() if x.startswith("| ") and "| dry |" in x]) == len(found)
    table = [x for x in final.splitlines() if x.startswith("| ") and "| dry |" in x]
    assert table == [f"| {c.name} | dry | 0 |  |" for c in found]
    assert f"{len(found)} dry" in final
    # every command of every check is shown, in its order
    shown = [x.strip()[2:] for x in live.splitlines() if x.strip().startswith("$ ")]
    assert shown == [line for c in found for line in c.commands]
    # the speed measurements come last, alone
    assert [c.alone for c in found] == sorted(c.alone for c in found) and sum(c.alone for c in found) >= 2
    assert all(c.name.startswith("bench/") for c in found if c.alone)


def test_a_failure_or_a_hang_does_not_stop_the_rest(tmp_path):
    stops_at_sigterm = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
                        "print('step 10: val_loss 1.0', flush=True); time.sleep(30); sys.exit(1)")
    found = [gpu_check.Check("fails", [f"{PY} -c 'import sys; print(\"bad input\"); sys.exit(3)'", f"{PY} -c 'print(2)'"]),
             gpu_check.Check("hangs", [f"{PY} -c 'import time; time.sleep(30)'"]),
             gpu_check.Check("stops when told", [f"sigterm {PY} -c \"{stops_at_sigterm}\""]),
             gpu_check.Check("needs bf16", [f"{PY} -c 'print(1)'"], needs_bf16=True),
             gpu_check.Check("passes", [f"{PY} -c 'print(1)'"])]
    with open(tmp_path / "log.txt", "w") as log:
        rows = gpu_check.run_checks(found, str(tmp_path), timeout=3, has_bf16=False, log=log, out=Stamped())
    assert [r["status"] for r in rows] == ["FAILED", "timeout", "ok", "skipped", "ok"]
    assert rows[0]["note"] == "bad input" and rows[1]["seconds"] < 10
    assert "bad input" in (tmp_path / "check00" / "log.txt").read_text()  # each check's output in its folder


def test_rows_are_printed_and_logged_as_checks_end(tmp_path):
    stamp = tmp_path / "stamp_script"
    stamp.write_text(STAMP)
    log_path = tmp_path / "log.txt"
    seen_in_log = {}

    def on_line(line):  # the moment the fast row is printed: what the log on disk holds
        if "| fast |" in line:
            seen_in_log["fast"] = log_path.read_text()

    out = Stamped(on_line)
    found = [gpu_check.Check("slow", [f"{PY} {stamp} {{w}}/t.txt slow 2.5"]),
             gpu_check.Check("fast", [f"{PY} {stamp} {{w}}/t.txt fast 0"])]
    with open(log_path, "w") as log:
        rows = gpu_check.run_checks(found, str(tmp_path / "work"), timeout=30, log=log, out=out)
    assert [r["status"] for r in rows] == ["ok", "ok"]  # the table's order is the checks', not the ends'
    (fast_at, fast_row), (slow_at, _) = out.row("fast"), out.row("slow")
    assert slow_at - fast_at > 1.5, "the fast check's row waited for the slow check"
    assert "| fast | ok |" in seen_in_log["fast"] and "fast done" in seen_in_log["fast"]
    assert "slow done" not in seen_in_log["fast"]
    ended = float(fast_row.split("|")[1])  # the row says when it ended, in seconds from the start
    assert ended < 2


def test_checks_run_side_by_side_and_the_benchmarks_alone_after_them(tmp_path):
    stamp = tmp_path / "stamp_script"
    stamp.write_text(STAMP)
    t = tmp_path / "t.txt"
    found = [gpu_check.Check(f"c{k}", [f"{PY} {stamp} {t} c{k}a 1.5", f"{PY} {stamp} {t} c{k}b 0"]) for k in range(4)]
    found.insert(1, gpu_check.Check("bench", [f"{PY} {stamp} {t} bench 0.2"], alone=True))
    t0 = time.monotonic()
    rows = gpu_check.run_checks(found, str(tmp_path / "work"), timeout=30, parallel=4, out=Stamped())
    took = time.monotonic() - t0
    assert [r["status"] for r in rows] == ["ok"] * 5
    s = stamps(t)
    first_end = min(s[f"c{k}a", "end"] for k in range(4))
    assert all(s[f"c{k}a", "start"] < first_end for k in range(4)), "the four checks did not overlap"
    assert took < 4 * 1.5, f"{took:.1f} s: the four 1.5 s checks ran one after another"
    for k in range(4):  # a check's commands in order
        assert s[f"c{k}b", "start"] >= s[f"c{k}a", "end"]
    # the benchmark, listed second, waits for every other check, and nothing runs beside it
    assert s["bench", "start"] >= max(s[label, "end"] for label, _ in s if label != "bench")


def test_the_budget_stops_the_run_with_a_table(tmp_path, capsys):
    spawns = tmp_path / "spawns_script"
    spawns.write_text(SPAWNS)
    found = [gpu_check.Check("quick", [f"{PY} -c 'print(1)'"]),
             gpu_check.Check("long, then more", [f"{PY} {spawns} {{w}}/pids", f"{PY} -c 'print(2)'"]),
             gpu_check.Check("long too", [f"{PY} -c 'import time; time.sleep(60)'"]),
             gpu_check.Check("queued", [f"{PY} -c 'print(3)'"]),
             gpu_check.Check("bench", [f"{PY} -c 'print(4)'"], alone=True)]
    t0 = time.monotonic()
    with open(tmp_path / "log.txt", "w") as log:
        rows = gpu_check.run_checks(found, str(tmp_path), timeout=120, log=log, parallel=2, budget=2.5, out=Stamped())
    took = time.monotonic() - t0
    assert 2.5 <= took < 6, took
    assert [r["status"] for r in rows] == ["ok", "stopped at the budget", "stopped at the budget",
                                           "not started", "not started"]
    assert rows[1]["note"] == "in command 1 of 2" and 2 <= rows[1]["seconds"] < 5
    # the stopped command's whole process group is gone: its grandchild too
    pids = [int(p) for p in (tmp_path / "check01" / "pids").read_text().split()]
    deadline = time.monotonic() + 3
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert "the budget is spent" in (tmp_path / "log.txt").read_text()
    gpu_check.print_table(rows, "cut short", took)
    out = capsys.readouterr().out
    assert "| long too | stopped at the budget |" in out and "| queued | not started | - |  |" in out
    assert "1 ok, 2 stopped at the budget, 2 not started" in out


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_a_sigterm_from_outside_ends_the_run_like_the_budget(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "a stand-in GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    monkeypatch.setattr(gpu_check, "checks", lambda: [
        gpu_check.Check("quick", [f"{PY} -c 'print(1)'"]),
        gpu_check.Check("long", [f"{PY} -c 'import time; time.sleep(60)'"]),
        gpu_check.Check("bench", [f"{PY} -c 'print(2)'"], alone=True)])
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    t0 = time.monotonic()
    assert gpu_check.main(["--work", str(tmp_path)]) == 0
    assert time.monotonic() - t0 < 6
    out = capsys.readouterr().out
    final = out.split("in the order of the checks:")[1]
    assert "| quick | ok |" in final and "| long | stopped at the budget |" in final
    assert "| bench | not started |" in final
    assert signal.getsignal(signal.SIGTERM) is before  # main leaves the handler as it found it
