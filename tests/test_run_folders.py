"""Run folders: stages keyed by their inputs, one writer per folder, forced reruns that cannot half-finish,
failed and interrupted runs (in process, and SIGKILL / SIGINT on the `npk` command)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from npk import cli
from npk.experiments import EXPERIMENTS, npk_evolution as evolution_module, run_experiment
from npk.experiments.base import Experiment
from npk.experiments.common import load_data, make_model, train_net
from npk.experiments.folder import RunFolder, RunFolderBusy

CALLS: list[str] = []
HOOKS: dict = {}


def tiny_body(cfg, run):
    """Two cached stages (square reads b; double reads b, then a) and one keyed training; HOOKS make it
    fail or wait."""
    if HOOKS.get("fail") == "early":
        raise ValueError("failing before any stage")
    data = load_data(cfg, flatten=True, run=run)
    b = cfg["b"]
    square = run.cached("square", lambda: CALLS.append("square") or b * b)
    double = run.cached("double", lambda: CALLS.append("double") or 2 * cfg["a"])
    result = train_net(run, "net", make_model("fc", "dnn", data, cfg), data, cfg, cfg["seed"])
    if "wait" in HOOKS:
        HOOKS["inside"].set()
        HOOKS["wait"].wait(30)
    if HOOKS.get("fail") == "late":
        raise ValueError("failing after the stages")
    if HOOKS.get("fail") == "interrupt":
        raise KeyboardInterrupt
    run.figure_path("stages.png").write_bytes(f"a={cfg['a']}".encode())
    run.report.paragraph(f"a = {cfg['a']}, b = {cfg['b']}")
    return {"square": square, "double": double, "acc": result.final_test_acc}


TINY = Experiment("tiny", "a test experiment", dict(
    dataset="digits", data_root=None, n_train=60, n_test=30, seed=0, binary=None, a=1, b=2, widths=[8],
    epochs=2, lr=0.05, batch_size=16, optimizer="sgd", device="cpu"), tiny_body)


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "tiny", TINY)
    CALLS.clear()
    HOOKS.clear()


def run_tiny(out, force=False, fail="", **overrides):
    """Run tiny into `out`; fail: "early" (before any stage), "late" (after them) or "interrupt" (after them)."""
    HOOKS["fail"] = fail
    folder = run_experiment("tiny", out, overrides=overrides, force=force, progress=False)
    return json.loads((folder / "results.json").read_text())


# ------------------------------------------------------------------------------------------ keyed stages
def stop_tiny(out, **overrides):
    """A run of tiny that is interrupted after its stages; its results.json."""
    with pytest.raises(KeyboardInterrupt):
        run_tiny(out, fail="interrupt", **overrides)
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_a_changed_value_recomputes_only_the_stages_that_read_it(tmp_path):
    out = tmp_path / "run"
    first = stop_tiny(out)
    assert CALLS == ["square", "double"] and set(first["stages"].values()) == {"computed"}
    CALLS.clear()
    second = stop_tiny(out, a=7)                       # a: read by double only
    assert CALLS == ["double"]
    assert second["stages"] == {"square": "reused", "double": "recomputed: a: 1 -> 7", "net": "reused"}
    CALLS.clear()
    third = run_tiny(out, a=7, lr=0.1)                 # lr: the training's
    assert CALLS == [] and third["double"] == 14 and third["square"] == 4
    assert third["stages"] == {"square": "reused", "double": "reused", "net": "recomputed: lr changed"}
    assert "Saved stages: 0 computed, 2 reused from an earlier run, 1 recomputed" in (out / "report.md").read_text()
    CALLS.clear()
    forced = run_tiny(out, force=True, a=7, lr=0.1)   # --force starts afresh, and gives the same numbers
    assert CALLS == ["square", "double"] and set(forced["stages"].values()) == {"computed"}
    assert forced["acc"] == third["acc"]


@pytest.mark.slow
def test_npk_evolution_with_a_changed_n_kernel_matches_a_fresh_run_and_reuses_the_training(tmp_path, monkeypatch):
    """The issue's case: an interrupted n_kernel = 60 run, rerun with n_kernel = 40."""
    settings = dict(multiclass=False, epochs=2)
    real, calls = evolution_module.npk_numbers, []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evolution_module, "npk_numbers", interrupt_third)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_experiment("npk-evolution", out, overrides={**settings, "n_kernel": 60}, quick=True, progress=False)
    assert json.loads((out / "results.json").read_text())["stopped"]["reason"] == "interrupted"
    monkeypatch.setattr(evolution_module, "npk_numbers", real)
    run_experiment("npk-evolution", out, overrides={**settings, "n_kernel": 40}, quick=True, progress=False)
    fresh = run_experiment("npk-evolution", tmp_path / "fresh", overrides={**settings, "n_kernel": 40}, quick=True,
                           progress=False)
    rerun, expected = (json.loads((f / "results.json").read_text()) for f in (out, fresh))
    assert rerun["npk_evolution"] == expected["npk_evolution"]
    assert {len(s) for s in rerun["npk_evolution"]["4 vs 7"]["spectra"].values()} == {40}
    stages = rerun["stages"]
    assert stages["evolution-train-4-vs-7"] == "reused"
    assert all(stages[f"evolution-4-vs-7-weights-{e}"] == "reused" for e in (0, 1))
    assert stages["evolution-4-vs-7-epoch-0"] == "recomputed: n_kernel changed"


def test_a_truncated_cache_file_is_named_and_recomputed(tmp_path, capsys):
    out = tmp_path / "run"
    stop_tiny(out)
    cache = out / "cache" / "square.pt"
    cache.write_bytes(cache.read_bytes()[:40])
    CALLS.clear()
    again = run_tiny(out)
    assert CALLS == ["square"] and again["square"] == 4
    assert again["stages"]["square"].startswith(f"recomputed: {cache} is unreadable")
    assert f"npk: note: {cache} is unreadable" in capsys.readouterr().err


def test_a_truncated_checkpoint_is_named_and_training_starts_again(tmp_path):
    out = tmp_path / "run"
    first = run_tiny(tmp_path / "first")
    stop_tiny(out)
    checkpoint = out / "cache" / "net" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"{checkpoint} is unreadable .*training from epoch 0"):
        again = run_tiny(out)
    assert again["acc"] == first["acc"] and again["stages"]["net"] == "reused"


def test_stages_saved_by_an_older_npk_are_reused_with_a_note(tmp_path):
    """Folders from before input records (a long training must not be lost): reused as they are, and said so."""
    out = tmp_path / "run"
    stop_tiny(out)
    torch.save(99, out / "cache" / "square.pt")               # the old format: the bare value
    (out / "cache" / "net" / "inputs.json").unlink()
    CALLS.clear()
    results = run_tiny(out)
    assert CALLS == [] and results["square"] == 99
    legacy = "reused (no record: written by an older npk)"
    assert results["stages"] == {"square": legacy, "double": "reused", "net": legacy}
    assert sum("has no record of its inputs (an older npk wrote it)" in n for n in results["notes"]) == 2


# ------------------------------------------------------------------------------------------ one writer
def test_a_second_run_in_a_folder_in_use_is_refused_with_the_holder(tmp_path, capsys):
    """Two real runs at once (threads: each opens the lock file itself, so flock separates them)."""
    out = tmp_path / "run"
    HOOKS.update(inside=threading.Event(), wait=threading.Event())
    results = {}
    first = threading.Thread(target=lambda: results.update(first=run_tiny(out)))
    first.start()
    assert HOOKS["inside"].wait(60)
    assert cli.main(["run", "tiny", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out}: in use by pid {os.getpid()} since " in err[0]
    HOOKS["wait"].set()
    first.join(60)
    assert results["first"]["finished"] is True and results["first"]["square"] == 4
    assert not (tmp_path / ".run.lock").exists()


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "run"
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": 999999, "since": "2026-01-01 00:00:00"}))
    results = run_tiny(out)
    assert results["finished"] is True
    assert results["notes"] == [f"took over the lock of {out} from pid 999999 since 2026-01-01 00:00:00, which "
                                f"ended without releasing it (killed?)"]


def test_the_lock_refuses_while_held(tmp_path):
    with RunFolder(tmp_path / "run"):
        with pytest.raises(RunFolderBusy, match=f"in use by pid {os.getpid()} since"):
            RunFolder(tmp_path / "run").__enter__()


# ------------------------------------------------------------------------------------------ --force
def test_an_interrupted_force_leaves_the_old_run_whole_and_resumes_on_the_next_force(tmp_path, capsys):
    out = tmp_path / "run"
    run_tiny(out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(KeyboardInterrupt):
        run_tiny(out, force=True, a=5, fail="interrupt")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before                                   # report, figures, config, results: the old run
    assert (tmp_path / ".run.new" / "cache" / "double.pt").exists()
    CALLS.clear()
    new = run_tiny(out, force=True, a=5)
    assert CALLS == [] and new["double"] == 10 and new["stages"]["double"] == "reused"
    assert "resuming the interrupted forced rerun" in capsys.readouterr().err
    assert (out / "figures" / "stages.png").read_bytes() == b"a=5" and not (tmp_path / ".run.new").exists()


def test_a_swap_cut_between_its_renames_puts_the_finished_run_back(tmp_path, capsys):
    out = tmp_path / "run"
    run_tiny(out)
    os.rename(out, tmp_path / ".run.old")                    # as if killed between the two renames
    with pytest.raises(FileExistsError, match="holds a finished run"):
        run_tiny(out)
    assert json.loads((out / "results.json").read_text())["finished"] is True
    assert "put back the finished run" in capsys.readouterr().err


def test_a_forced_rerun_that_finished_but_was_not_swapped_in_is_swapped_in_not_thrown_away(tmp_path, capsys):
    out = tmp_path / "run"
    run_tiny(out)
    run_tiny(tmp_path / ".run.new", a=5)                     # as if killed right after finishing, before the swap
    with pytest.raises(FileExistsError, match="holds a finished run"):
        run_tiny(out)
    assert json.loads((out / "results.json").read_text())["double"] == 10 and not (tmp_path / ".run.new").exists()
    assert "swapped in the finished forced rerun" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ failed runs
def test_a_run_failing_before_any_stage_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="failing before any stage"):
        run_tiny(tmp_path / "run", fail="early")
    assert not (tmp_path / "run").exists()


def test_a_failed_run_is_recorded_and_reported_by_the_next_runs(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="failing after the stages"):
        run_tiny(out, fail="late")
    stopped = json.loads((out / "results.json").read_text())["stopped"]
    assert stopped["reason"] == "ValueError: failing after the stages"
    run_tiny(tmp_path / "other")
    assert f"unfinished runs in {tmp_path} (failed or interrupted): run (stopped at {stopped['at']}: ValueError: " \
           f"failing after the stages)" in capsys.readouterr().err
    results = run_tiny(out)
    assert "stopped" not in results and results["stages"]["square"] == "reused"
    assert f"resuming {out}: the last run there stopped at {stopped['at']}" in results["notes"][0]


# ------------------------------------------------------------------------------------------ signals
def npk_command(out, *extra):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-m", "npk.cli", "run", "npk-evolution", "--quick", "--no-progress", "--threads", "1",
            "--set", "multiclass=false", "--set", "epochs=8", "--out", str(out), *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_when(proc, folder, n_files, sig, meanwhile=lambda: None):
    """Send `sig` once `folder` holds n_files cached epochs (after calling meanwhile())."""
    deadline = time.time() + 120
    while len(list(folder.glob("cache/evolution-*-epoch-*.pt"))) < n_files and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    meanwhile()
    proc.send_signal(sig)
    return proc.communicate(timeout=60)


@pytest.mark.slow
def test_sigkill_then_sigint_then_a_rerun_give_the_uninterrupted_numbers(tmp_path, capsys):
    out = tmp_path / "run"
    first = npk_command(out)

    def second_run_is_refused():
        assert cli.main(["run", "npk-evolution", "--quick", "--out", str(out)]) == 2
        assert f"--out {out}: in use by pid {first.pid} since " in capsys.readouterr().err

    stop_when(first, out, 1, signal.SIGKILL, second_run_is_refused)
    proc = npk_command(out)
    _, err = stop_when(proc, out, 3, signal.SIGINT)
    assert "took over the lock" in err and proc.returncode == 130
    assert err.strip().endswith("npk run: interrupted; rerun the same command to resume")
    assert json.loads((out / "results.json").read_text())["stopped"]["reason"] == "interrupted"
    assert npk_command(out).wait(120) == 0
    fresh = run_experiment("npk-evolution", tmp_path / "fresh", quick=True, progress=False,
                           overrides={"multiclass": False, "epochs": 8})
    rerun, expected = (json.loads((f / "results.json").read_text()) for f in (out, fresh))
    assert rerun["finished"] and rerun["npk_evolution"] == expected["npk_evolution"]
