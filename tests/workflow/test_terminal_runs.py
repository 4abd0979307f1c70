"""What the terminal shows after a failed or an overridden real run."""

from __future__ import annotations

import pytest
import yaml

from pipeline_run import REPO, copy_workflow, reference_run, snakemake, write_config


@pytest.mark.slow
def test_offline_failure_names_the_log_and_its_cause(tmp_path):
    """A mirror that cannot be reached (here a file:// path that does not exist; offline
    https fails the same way): one line with the cause, pointing at README's offline
    section, and the job's log printed by the default profile's show-failed-logs."""
    wf = copy_workflow(tmp_path / "wf")
    run = tmp_path / "run"
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(librispeech_url="file:///nonexistent/mirror", devices=["cpu"])
    write_config(run, config)
    proc = snakemake(wf, run, "--cores", "1", "data/archives/test-clean.tar.gz", check=False,
                     timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "workflow specific profile profiles/default" in out
    assert "whisper-ptq: rule download failed; log: logs/download/test-clean.log" in out
    cause = next(line for line in out.splitlines() if line.startswith("  cause: "))
    assert "cannot fetch file:///nonexistent/mirror/md5sum.txt" in cause
    assert "README.md, 'Offline / air-gapped use'" in cause
    assert "Offline / air-gapped use" in (REPO / "README.md").read_text()


@pytest.mark.slow
def test_report_after_an_overridden_run_reads_the_recorded_config(tmp_path_factory,
                                                                  tiny_en_dir, mini_dir):
    """The small reference run's settings play `--config` overrides: with a config.yaml whose
    top-level settings differ (another model, limit and splits, cuda too), plain `snakemake
    --report` looks for outputs that run never made, and `--configfile
    results/report/config.yaml` builds the report. Only configured figures are listed."""
    wf, run = reference_run(tmp_path_factory, tiny_en_dir, mini_dir)
    used = yaml.safe_load((run / "config.yaml").read_text())
    recorded = yaml.safe_load((run / "results/report/config.yaml").read_text())
    assert "threads" not in recorded  # changes no result (README, "Re-runs")
    assert {k: recorded[k] for k in used if k != "threads"} == {
        k: v for k, v in used.items() if k != "threads"}
    saved = (run / "config.yaml").read_text()
    html = run / "report.html"
    try:
        (run / "config.yaml").write_text(yaml.safe_dump({
            **used, "model": "openai/whisper-small", "limit": None, "devices": ["cpu", "cuda"],
            "splits": ["test-clean", "test-other"]}, sort_keys=False))
        plain = snakemake(wf, run, "--report", html, check=False, timeout=600)
        assert plain.returncode != 0 and not html.exists()
        recorded_file = run / "results/report/config.yaml"  # relative: to the cwd
        snakemake(wf, run, "--report", html, "--configfile", recorded_file, timeout=600)
        made = html.read_text()
        assert "dwer.png" in made and "table1.md" in made and "pareto_cpu.png" in made
        assert "noise.png" not in made and "fig1.png" not in made  # test-clean only
        assert "pareto_cuda" not in made
    finally:
        (run / "config.yaml").write_text(saved)
        html.unlink(missing_ok=True)
