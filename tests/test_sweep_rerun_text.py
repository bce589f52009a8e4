"""`longgen generate --rerun-failed` runs a failed job with exactly the text it was given (issue 28 item 2): a
prompt holding `${…}` and a comma, in a sweep directory with a space, is the same prompt on the re-run as in the
job that succeeded, and `.hydra/overrides.yaml` keeps the override as Hydra got it (the escape included)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from test_no_data_loss import SMALL

PROMPT = "a cat, then a ${dog}"


def test_rerun_failed_keeps_a_prompt_with_an_interpolation_and_a_comma(tmp_path, monkeypatch, capfd, own_logging):
    """The sweep and `--rerun-failed` run `longgen.cli.main` in this process (the command line reaches Hydra as from
    a shell: a list of words); the failed job it runs again is a CLI process of its own, started from the ledger."""
    import torch

    from longgen.backbones.cogvideox import CogVideoXBackbone
    from longgen.cli import main

    plain = CogVideoXBackbone.load

    def load(self):  # fails as on a full GPU for weights_seed=1 only, in this process (the re-run is fine)
        if self.weights_seed == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return plain(self)

    monkeypatch.setattr(CogVideoXBackbone, "load", load)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sweep = tmp_path / "my sweep"
    small = [a for a in SMALL if not a.startswith("prompt=")]
    try:
        code = main(["generate", "-m", *small, f"prompt={PROMPT}", "backbone.weights_seed=1,0",
                     f"hydra.sweep.dir={sweep}"])
    except SystemExit as exc:  # what the process would exit with
        code = exc.code
    stderr = capfd.readouterr().err
    assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert json.loads((sweep / "sweep.json").read_text())["failed"] == [0]
    overrides = (sweep / "1_gen-l-video" / ".hydra" / "overrides.yaml").read_text()
    assert "\\${dog}" in overrides, overrides

    assert main(["generate", "--rerun-failed", str(sweep)]) == 0
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr, stderr[-3000:]
    for job in ("0_gen-l-video", "1_gen-l-video"):
        assert json.loads((sweep / job / "story.json").read_text())["global"] == PROMPT, job
    assert json.loads((sweep / "sweep.json").read_text())["done"] == [0, 1]


def test_rerun_failed_starts_jobs_anew_from_the_directory_the_sweep_was_started_in(tmp_path, monkeypatch):
    """A job started anew by --rerun-failed (no checkpoint) gets its overrides as recorded, relative paths included
    (story=story.json, a LoRA's path): it runs in the working directory the sweep was started from (multirun.yaml's
    hydra.runtime.cwd) and writes into its own run directory, wherever --rerun-failed is called from and however
    the sweep directory is spelled. Job 0 failed (in the ledger), job 1 never ran (composed from multirun.yaml)."""
    import longgen.run.sweep as sweep_module
    from omegaconf import OmegaConf

    from longgen.overrides import hydra_quote

    origin, elsewhere, sweep = tmp_path / "origin", tmp_path / "elsewhere", tmp_path / "origin" / "sweep"
    sweep.mkdir(parents=True)
    elsewhere.mkdir()
    task = ["story=story.json", "seed=0,1"]
    OmegaConf.save({"hydra": {"overrides": {"task": task}, "runtime": {"cwd": str(origin)}}}, sweep / "multirun.yaml")
    (sweep / "sweep-jobs.jsonl").write_text(json.dumps({"job": 0, "overrides": ["story=story.json", "seed=0"],
                                                        "run_dir": str(sweep / "0_syncos"), "status": "failed"}))
    monkeypatch.setattr(sweep_module, "_sweep_loader", lambda config: None)
    monkeypatch.setattr(sweep_module, "job_subdir", lambda loader, config, overrides, number: f"{number}_syncos")
    started = []

    def run(command, **kwargs):
        started.append((command[command.index("generate") + 1:], kwargs.get("cwd")))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(sweep_module.subprocess, "run", run)
    monkeypatch.chdir(elsewhere)
    assert sweep_module.rerun_failed(Path("../origin/sweep")) == 0
    assert started == [(["story=story.json", f"seed={n}", f"hydra.run.dir={hydra_quote(str(sweep / f'{n}_syncos'))}"],
                        origin) for n in (0, 1)]


def test_rerun_failed_records_a_failed_job_finished_by_hand_as_done(tmp_path, monkeypatch, capsys):
    """A failed sweep job continued by hand (`longgen resume RUN_DIR`) holds a finished run: --rerun-failed records
    it as done and starts nothing (started again it was refused as a finished run, and the sweep stayed failed with
    exit status 1). A failed job without a finished run is still started."""
    import longgen.run.sweep as sweep_module

    sweep = tmp_path / "sweep"
    for n in (0, 1):
        (sweep / f"{n}_syncos").mkdir(parents=True)
    (sweep / "0_syncos" / "manifest.json").write_text("{}")
    (sweep / "1_syncos" / "checkpoint.safetensors").write_text("")
    (sweep / "sweep-jobs.jsonl").write_text("".join(
        json.dumps({"job": n, "overrides": [f"seed={n}"], "run_dir": str(sweep / f"{n}_syncos"), "status": "failed",
                    "error": "interrupted"}) + "\n" for n in (0, 1)))
    started = []
    monkeypatch.setattr(sweep_module.subprocess, "run",
                        lambda command, **kwargs: started.append(command[3:]) or subprocess.CompletedProcess(command, 0))
    assert sweep_module.rerun_failed(sweep) == 0
    assert started == [["resume", str(sweep / "1_syncos")]]
    assert "0_syncos holds a finished run; recorded as done" in capsys.readouterr().err
    summary = json.loads((sweep / "sweep.json").read_text())
    assert (summary["done"], summary["failed"]) == ([0, 1], [])
