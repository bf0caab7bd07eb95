"""chain.py through Kaggle's real client (kagglesdk) against kaggle_standin.py on 127.0.0.1:7777: a
rehearsed chain ends bit-identical to its kernel file run straight, a driver stopped between parts
carries on without pushing a part twice or skipping one, and each way a chain stops says why."""

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import chain
import ckpt
import kaggle_client
import kaggle_standin
from conftest import assert_same_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 0.03M-parameter GPT on the kernel's own Shakespeare sample: some 100 steps a second, 63,270 planned.
SMALL = ["--set", "n_layer=2", "--set", "n_head=2", "--set", "n_embd=32", "--set", "block_size=16",
         "--set", "batch_size=4"]
BUDGET = "0.002"  # 7.2 s a part: start-up, a few hundred steps and the hand-off


def versions(out, slug):
    """The stand-in's record of what was pushed to rehearsal/<slug>: one folder per version."""
    folder = os.path.join(out, "kaggle", "rehearsal", slug)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def pushed(out, slug, version):
    with open(os.path.join(out, "kaggle", "rehearsal", slug, f"v{version}", "pushed.json"), encoding="utf-8") as f:
        return json.load(f)


def kernel_args(path):
    """STAGE and ARGS at the top of a kernel file, as Kaggle runs it with no arguments."""
    with open(path, encoding="utf-8") as f:
        top = f.read(4000)
    settings = {}
    for line in top.splitlines():
        if line.startswith(("STAGE = ", "ARGS = ")):
            name, _, value = line.partition(" = ")
            settings[name] = ast.literal_eval(value.split("  #")[0])
    return settings["STAGE"], settings["ARGS"]


def test_a_rehearsed_chain_survives_a_stopped_driver_and_ends_as_its_kernel_run_straight(tmp_path):
    out = tmp_path / "rehearsal"
    command = [sys.executable, os.path.join(ROOT, "chain.py"), "--rehearse", "--task", "lm", "--parts", "3",
               "--budget-hours", BUDGET, "--out", str(out), "--accelerator", "NvidiaL4", "--internet",
               "--data-source", "dataset:someone/extra-text", *SMALL]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # stop the driver (as a closed laptop would) once part 2 is pushed
        time.sleep(0.2)
        if os.path.exists(out / "chain.json") and '"part": 2' in (out / "chain.json").read_text():
            break
    driver.send_signal(signal.SIGKILL)
    first = driver.communicate()[0]
    assert "part 1/3 on rehearsal/baton-lm-a v1: RUNNING, 0:00:0" in first, first
    assert "part 1/3 done: baton checkpoint_part1.safetensors at global step" in first
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "carrying on from" in again.stdout and "part 1/3 rehearsal/baton-lm-a v1 complete" in again.stdout
    assert "part 1/3: pushed" not in again.stdout

    # Each part was pushed exactly once, to the kernels in turn: a v1 (1), b v1 (2), a v2 (3).
    assert versions(out, "baton-lm-a") == ["v1", "v2"] and versions(out, "baton-lm-b") == ["v1"]
    part2 = pushed(out, "baton-lm-b", 1)
    assert part2["kernelDataSources"] == ["rehearsal/baton-lm-a"]
    assert part2["datasetDataSources"] == ["someone/extra-text"]
    assert part2["enableGpu"] is True and part2["machineShape"] == "NvidiaL4" and part2["enableInternet"] is True
    assert part2["sessionTimeoutSeconds"] == 12 * 3600 and part2["kernelType"] == "script"
    with open(out / "part2" / "kernel-metadata.json", encoding="utf-8") as f:
        metadata = json.load(f)
    assert metadata["id"] == "rehearsal/baton-lm-b" and metadata["kernel_sources"] == ["rehearsal/baton-lm-a"]
    assert kernel_args(out / "part1" / "kaggle_kernel.py") == (
        "train", f"--task lm --part 1 --budget-hours {BUDGET} " + " ".join(SMALL))
    assert kernel_args(out / "part2" / "kaggle_kernel.py") == ("train", f"--task lm --part 2 --budget-hours {BUDGET}")

    record = json.loads((out / "chain.json").read_text())
    steps = [p["global_step"] for p in record["pushes"]]
    assert [p["part"] for p in record["pushes"]] == [1, 2, 3] and steps == sorted(steps) and steps[0] > 0
    last = out / "kaggle" / "rehearsal" / "baton-lm-a" / "v2" / "working" / "runs" / "lm" / "checkpoint_part3.safetensors"
    assert str(last) in again.stdout

    # The file that part 1 pushed, run straight to the same global step in an empty folder.
    straight = tmp_path / "straight"
    (straight / "tmp").mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(straight / "tmp"), "BATON_INPUT_ROOTS": ""}
    run = subprocess.run([sys.executable, str(out / "part1" / "kaggle_kernel.py"), "--task", "lm", "--part", "1",
                          "--max-steps", str(steps[-1]), *SMALL], cwd=straight, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    chained, alone = ckpt.load(last), ckpt.load(straight / "runs" / "lm" / "checkpoint_part1.safetensors")
    assert chained.meta["global_step"] == alone.meta["global_step"] == steps[-1]
    assert_same_tensors(chained, alone)


def test_a_part_that_errors_stops_the_chain_with_the_end_of_its_log(tmp_path, capsys):
    out = str(tmp_path / "chain")
    args = ["--rehearse", "--task", "lm", "--parts", "2", "--budget-hours", BUDGET, "--out", out, "--accelerator", "none",
            "--set", "no_such_setting=1"]
    assert chain.main(args) == 1
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first == ("error: part 1/2 (rehearsal/baton-lm-a version 1) ended with status ERROR: the script exited "
                     f"with status 2. Its log ({out}/part1/log.txt) ends:")
    assert any("no_such_setting" in line and line.startswith("  | error:") for line in rest)
    assert rest[-1].startswith("next: fix what the log says") and "--retry" in rest[-1]
    assert pushed(out, "baton-lm-a", 1)["enableGpu"] is False
    # Run again as it was: nothing is pushed, the reason is said again; --retry pushes part 1 once more.
    assert chain.main(args) == 1
    assert "ended with status ERROR" in capsys.readouterr().err and versions(out, "baton-lm-a") == ["v1"]
    assert chain.main(args + ["--retry"]) == 1
    assert versions(out, "baton-lm-a") == ["v1", "v2"] and versions(out, "baton-lm-b") == []


def test_too_little_gpu_quota_pushes_nothing_and_says_when_it_resets(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "chain")
    assert chain.main(["--rehearse", "--task", "lm", "--parts", "2", "--budget-hours", "2", "--out", out,
                       "--quota-hours", "1.5"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the weekly GPU quota has 1.5 h left, less than the part's --budget-hours 2; it "
                          "resets at ") and "UTC, in " in err and "--wait-for-quota" in err and "\n" not in err
    assert versions(out, "baton-lm-a") == []
    # --wait-for-quota waits for the reset instead (the wait cut short here, as Ctrl-C would)
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(chain.time, "sleep", sleep)
    assert chain.main(["--rehearse", "--task", "lm", "--parts", "2", "--budget-hours", "2", "--out", out,
                       "--quota-hours", "1.5", "--wait-for-quota"]) == 130
    printed = capsys.readouterr().out
    assert "; waiting for it (--wait-for-quota)" in printed and "The same command carries on from" in printed
    assert 60 <= waits[0] <= 7 * 24 * 3600 + 60 and versions(out, "baton-lm-a") == []


def craft_session(out, slug, version, log, files=(), code=0):
    """A version of rehearsal/<slug> that already ran: its log, its output files and its exit status."""
    folder = os.path.join(out, "kaggle", "rehearsal", slug, f"v{version}")
    for sub in ("input", "working", "tmp"):
        os.makedirs(os.path.join(folder, sub))
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(folder, "working", name)), exist_ok=True)
        open(os.path.join(folder, "working", name), "wb").close()
    with open(os.path.join(folder, "pushed.json"), "w", encoding="utf-8") as f:
        json.dump({"slug": f"rehearsal/{slug}", "startedAt": time.time(), "enableGpu": False}, f)
    with open(os.path.join(folder, "log.txt"), "w", encoding="utf-8") as f:
        f.write(log)
    with open(os.path.join(folder, "exit_code"), "w", encoding="utf-8") as f:
        f.write(f"{code}\n")


def record(out, *pushes):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "chain.json"), "w", encoding="utf-8") as f:
        json.dump({"format": "baton-chain/1", "task": "lm", "kernel": "rehearsal/baton-lm",
                   "pushes": [{"stage": "train", "kernel": "rehearsal/baton-lm-a", **p} for p in pushes]}, f)


@pytest.mark.parametrize("log, files", [
    ("stopped: SIGTERM while setting up, before this part's first step; nothing new to hand off\n", []),
    ("stopped: time budget at global step 40 (epoch 0/10) after 0:00:09\nbaton: ./runs/lm/checkpoint_part1.safetensors\n",
     ["runs/lm/best_model.safetensors"]),
])
def test_a_part_whose_output_holds_no_newer_baton_stops_the_chain(tmp_path, capsys, log, files):
    # As if the session had run while the driver was away: Kaggle says COMPLETE, the output says otherwise.
    out = str(tmp_path / "chain")
    craft_session(out, "baton-lm-a", 1, "checkpoints under ./runs/lm\n" + log, files)
    record(out, {"part": 1, "version": 1, "status": "RUNNING", "pushed_at": time.time() - 60})
    assert chain.main(["--rehearse", "--task", "lm", "--parts", "3", "--out", out]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: part 1/3 (rehearsal/baton-lm-a version 1) completed, but its output holds no baton "
                          "newer than step 0 (no checkpoint_part1.safetensors after a step past it).")
    assert "  | " + log.splitlines()[0] in err and "--retry" in err
    assert versions(out, "baton-lm-b") == []


def test_a_push_cut_off_is_looked_up_before_it_is_made_again(tmp_path, capsys, monkeypatch):
    # The real client's own path, not --rehearse's: KAGGLE_API_ENVIRONMENT=TEST and a token.
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "test-token")
    out = str(tmp_path / "chain")
    finished = "stopped: finished at global step 7 (epoch 1/1) after 0:00:02\ntraining is complete. Predict with:\n"
    craft_session(out, "baton-lm-a", 1, finished, ["runs/lm/checkpoint_part1.safetensors"])
    record(out, {"part": 1, "previous_version": None, "status": "pushing"})  # the driver stopped mid-push
    with kaggle_standin.StandIn(os.path.join(out, "kaggle")) as standin:
        assert standin.server.server_address == ("127.0.0.1", 7777)  # loopback only
        assert chain.main(["--task", "lm", "--kernel", "rehearsal/baton-lm", "--parts", "3", "--out", out]) == 0
    with pytest.raises(ConnectionRefusedError):  # and it stops with its test
        socket.create_connection(("127.0.0.1", 7777), timeout=5)
    printed = capsys.readouterr().out
    assert "the push of rehearsal/baton-lm-a that was cut off went through: version 1" in printed
    assert "training is complete at global step 7 after 1 part(s)" in printed
    assert versions(out, "baton-lm-a") == ["v1"] and versions(out, "baton-lm-b") == []


def test_a_push_that_never_arrived_is_made(tmp_path, capsys):
    out = str(tmp_path / "chain")
    craft_session(out, "baton-lm-a", 1, "", code=2)  # an earlier try
    record(out, {"part": 1, "previous_version": 1, "status": "pushing"})
    assert chain.main(["--rehearse", "--task", "lm", "--out", out, "--accelerator", "none",
                       "--set", "no_such_setting=1"]) == 1
    assert "the push of rehearsal/baton-lm-a that was cut off never arrived; pushing it now" in capsys.readouterr().out
    assert versions(out, "baton-lm-a") == ["v1", "v2"]


def test_the_chain_s_last_version_predicts_and_the_predictions_come_home(tmp_path, capsys):
    out = tmp_path / "chain"
    mlp = ["--set", "text_column=", "--set", "numeric_columns=carat,depth,table,x,y,z", "--set", "epochs=1",
           "--set", "hidden=32"]
    assert chain.main(["--rehearse", "--task", "reg", "--parts", "2", "--out", str(out), "--accelerator", "none",
                       "--infer", *mlp]) == 0
    printed = capsys.readouterr().out
    assert "training is complete" in printed and "part 2/2" not in printed  # complete after part 1
    infer = pushed(out, "baton-reg-b", 1)
    assert infer["kernelDataSources"] == ["rehearsal/baton-reg-a"]
    assert kernel_args(out / "infer" / "kaggle_kernel.py") == ("infer", "--task reg --ckpt auto")
    found = out / "kaggle" / "rehearsal" / "baton-reg-b" / "v1" / "input" / "baton-reg-a" / "runs" / "reg"
    assert f"--ckpt auto: {found} (global step" in (out / "infer" / "log.txt").read_text()
    # The same best model, predicted here: the same file.
    here = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), "--task", "reg", "--ckpt",
                           str(out / "kaggle" / "rehearsal" / "baton-reg-a" / "v1" / "working" / "runs" / "reg"),
                           "--out", str(tmp_path / "here.csv")], capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr
    assert (out / "predictions.csv").read_text() == (tmp_path / "here.csv").read_text()
    assert len((out / "predictions.csv").read_text().splitlines()) == 501


def test_dry_run_and_the_client_s_absence(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglesdk", None)  # as if `pip install kaggle` had never run
    out = str(tmp_path / "dry")
    assert chain.main(["--dry-run", "--task", "asr", "--kernel", "me/bengali-asr", "--parts", "5",
                       "--data-source", "competition:bengaliai-speech", "--data", "/kaggle/input/bengaliai-speech",
                       "--set", "preset=xlsr53", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert f"kaggle kernels push -p {out}/part1 -t 43200" in printed and "part 2 would go to me/bengali-asr-b" in printed
    with open(os.path.join(out, "part1", "kernel-metadata.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    assert metadata["id"] == "me/bengali-asr-a" and metadata["competition_sources"] == ["bengaliai-speech"]
    assert metadata["machine_shape"] == "NvidiaTeslaT4" and metadata["enable_gpu"] and not metadata["enable_internet"]
    assert kernel_args(os.path.join(out, "part1", "kaggle_kernel.py")) == (
        "train", "--task asr --part 1 --budget-hours 11 --data /kaggle/input/bengaliai-speech --set preset=xlsr53")
    assert chain.main(["--task", "lm", "--kernel", "me/bengali-asr", "--out", out]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: chain.py drives Kaggle through its official client, which is not installed: pip install "
                   "kaggle (train_part.py and infer.py do not need it)")


def test_no_credentials_is_one_sentence(tmp_path, capsys, monkeypatch):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert chain.main(["--task", "lm", "--kernel", "me/baton-lm", "--out", str(tmp_path / "chain")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no Kaggle API credentials: make a token at") and "\n" not in err


def test_kaggle_s_log_format_and_the_tasks_known_to_the_chain():
    entries = [{"stream_name": "stdout", "time": 1.0, "data": "a\n"}, {"stream_name": "stderr", "time": 2.0, "data": "b\n"}]
    assert kaggle_client.kaggle_log_text(json.dumps(entries)) == "a\nb\n"
    assert kaggle_client.kaggle_log_text("plain text\n") == "plain text\n"
    assert chain.log_lines("x\nstep 1\rstep 2\rstep 3\n\n") == ["x", "step 3"]
    from training.tasks import TASKS
    assert set(chain.PREDICTIONS) == set(TASKS)


def test_infer_ckpt_auto_without_a_run_says_what_to_attach(tmp_path, capsys, monkeypatch):
    import infer
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATON_INPUT_ROOTS", str(tmp_path / "input"))
    assert infer.main(["--task", "reg", "--ckpt", "auto"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --ckpt auto found no reg training checkpoint under runs/reg, {tmp_path / 'input'}; attach the "
        f"training's output or pass --ckpt PATH")
