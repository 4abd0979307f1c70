rule quantize:
    """Quantize the model with one entry's library and scheme into a checkpoint directory
    plus its quant.json facts (bytes on disk, what stays float)."""
    input:
        unpack(calibration_input),
        model_dir="data/models/{model}",
        # the library's own module: editing it re-runs only that library's entries
        module=library_module,
    output:
        checkpoint=directory("results/{model}/checkpoints/{entry}"),
        meta="results/{model}/checkpoints/{entry}.json",
    log:
        "logs/quantize/{model}/{entry}.log",
    conda:
        "../../envs/ptq.yaml"
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=lambda wc, attempt: 60 * attempt,  # minutes; more on a retry
        cpus_per_task=lambda wc, threads: threads,  # CPU job (SLURM); checkpoints are device-free
    params:
        entry=entry_config,
        calib=calibration_args,
    shell:
        "HF_HUB_OFFLINE=1 python -m whisper_ptq.cli quantize --entry {wildcards.entry} --config {params.entry:q}"
        " --model-dir {input.model_dir} --threads {threads} --out {output.checkpoint}"
        " --out-meta {output.meta} {params.calib} > {log} 2>&1"
