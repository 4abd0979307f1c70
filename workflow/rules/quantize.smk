rule quantize:
    """Quantize the model with one entry's library and scheme into a checkpoint directory
    plus its quant.json facts (bytes on disk, what stays float)."""
    input:
        unpack(calibration_input),
        model_dir="data/models/{model}",
        # the library's module (and those it imports): editing it re-runs only the entries
        # that use it
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
        **step("quantize"),
    shell:
        STEP
