# Whisper post-training quantization study: LibriSpeech archive -> Table 1 and Fig. 1.
# Rules are thin: each runs one step of the whisper_ptq package (workflow/whisper_ptq).
# Run: snakemake --cores 8     (config.yaml; override keys with --config key=value)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/transcribe.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    download,
    model,
    score,
    report,


rule all:
    """Every report output of the configured study (results/report/)."""
    default_target: True
    input:
        REPORT_FILES,


onsuccess:
    from whisper_ptq import terminal

    print(terminal.success(rules.report.output.summary, REPORT_FILES))


onerror:
    from whisper_ptq import terminal

    print(terminal.failure(log))
