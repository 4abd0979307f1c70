rule transcribe:
    """Greedy transcription of one shard of a split's length-sorted utterances with one
    checkpoint on one device, timed (encoder / decoder seconds, RTF, peak memory)."""
    input:
        checkpoint="results/{model}/checkpoints/{entry}",
        model_dir="data/models/{model}",
        features="data/features/{model}/{split}.safetensors",
        manifest="data/features/{model}/{split}.manifest.jsonl",
    output:
        # shard i of n of the split's length-sorted utterance list (common.smk: shard_files)
        hyp="results/{model}/{device}/{entry}/{split}/shard-{shard}of{nshards}.hyp.jsonl",
        timing="results/{model}/{device}/{entry}/{split}/shard-{shard}of{nshards}.timing.json",
    log:
        "logs/transcribe/{model}/{device}/{entry}/{split}/shard-{shard}of{nshards}.log",
    conda:
        "../../envs/ptq.yaml"
    threads: config["threads"]
    resources:
        mem_mb=16000,
        # minutes; a retry (profile `retries`) after a time-out gets more
        runtime=lambda wc, attempt: 240 * attempt,
        # snakemake-executor-plugin-slurm: a cuda job asks one GPU + cpus_per_gpu, a cpu job
        # cpus_per_task (0 = unset); partitions per device: profiles/slurm/config.yaml
        gpu=lambda wc: 1 if wc.device == "cuda" else 0,
        cpus_per_gpu=lambda wc, threads: threads if wc.device == "cuda" else 0,
        cpus_per_task=lambda wc, threads: 0 if wc.device == "cuda" else threads,
    params:
        **step("transcribe"),
    shell:
        STEP


rule score:
    """Gather a run's shards; WER/CER after the Whisper normalizer with per-utterance edit
    counts, pooled RTF, size reduction against fp32."""
    input:
        # every shard of the run (known once the split's features checkpoint has run)
        hyps=lambda wc: shard_files(wc, ".hyp.jsonl"),
        timings=lambda wc: shard_files(wc, ".timing.json"),
        meta="results/{model}/checkpoints/{entry}.json",
        fp32_meta="results/{model}/checkpoints/fp32.json",
    output:
        score="results/{model}/{device}/{entry}/{split}.score.json",
        # the shards gathered: hypotheses in id order, timing pooled over shards
        hyp="results/{model}/{device}/{entry}/{split}.hyp.jsonl",
        timing="results/{model}/{device}/{entry}/{split}.timing.json",
    log:
        "logs/score/{model}/{device}/{entry}/{split}.log",
    conda:
        "../../envs/report.yaml"
    params:
        **step("score"),
    shell:
        STEP
