"""bench/gpu_check.py's plumbing on a CPU: its commands are ones the stages accept, every check runs
whatever became of the one before, a hang is cut at its timeout, and the table says which is which."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402

PY = sys.executable


def test_the_dry_run_checks_every_command(tmp_path, capsys):
    assert gpu_check.main(["--dry", "--work", str(tmp_path)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "| dry |" in line]
    assert len(table) == len(gpu_check.checks()) >= 12


def test_a_failure_or_a_hang_does_not_stop_the_rest(tmp_path):
    stops_at_sigterm = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
                        "print('step 10: val_loss 1.0', flush=True); time.sleep(30); sys.exit(1)")
    found = [gpu_check.Check("fails", [f"{PY} -c 'import sys; print(\"bad input\"); sys.exit(3)'", f"{PY} -c 'print(2)'"]),
             gpu_check.Check("hangs", [f"{PY} -c 'import time; time.sleep(30)'"]),
             gpu_check.Check("stops when told", [f"sigterm {PY} -c \"{stops_at_sigterm}\""]),
             gpu_check.Check("needs bf16", [f"{PY} -c 'print(1)'"], needs_bf16=True),
             gpu_check.Check("passes", [f"{PY} -c 'print(1)'"])]
    with open(tmp_path / "log.txt", "w") as log:
        rows = gpu_check.run_checks(found, str(tmp_path), timeout=3, has_bf16=False, log=log)
    assert [r["status"] for r in rows] == ["FAILED", "timeout", "ok", "skipped", "ok"]
    assert rows[0]["note"] == "bad input" and rows[1]["seconds"] < 10
