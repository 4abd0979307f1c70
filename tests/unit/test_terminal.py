"""What a user sees in the terminal: the failed job's log and its one-line cause (onerror),
the summary and report paths (onsuccess), and `snakemake --report` after an overridden run."""

from __future__ import annotations




from whisper_ptq import terminal


def test_success_prints_the_summary_and_the_files_that_exist(tmp_path):
    summary = tmp_path / "summary.txt"
    summary.write_text("base — cpu\nentry  WERc\nfp32   3.76\n")
    made = tmp_path / "dwer.png"
    made.write_bytes(b"png")
    text = terminal.success(summary, [made, tmp_path / "never-made.png"])
    assert "fp32   3.76" in text and f"Report files in {tmp_path}/:" in text
    assert "  dwer.png" in text.splitlines() and "never-made" not in text
    assert "--configfile results/report/config.yaml" in text
