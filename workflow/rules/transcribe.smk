rule transcribe:
    input:
        checkpoint="results/{model}/checkpoints/{entry}",
        model_dir="data/models/{model}",
        features="data/features/{model}/{split}.safetensors",
        manifest="data/features/{model}/{split}.manifest.jsonl",
    output:
        hyp="results/{model}/{device}/{entry}/{split}.hyp.jsonl",
        timing="results/{model}/{device}/{entry}/{split}.timing.json",
    params:
        decoding=json.dumps(STUDY.decoding, sort_keys=True),
        timing=json.dumps(STUDY.timing, sort_keys=True),
        limit=STUDY.limit,
        # calibration utterances of this split (if it is the calibration split) are never scored
        calib_n=lambda wc: STUDY.calibration_excluded(wc.split),
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=240,
        # snakemake-executor-plugin-slurm: a cuda job asks one GPU + cpus_per_gpu, a cpu job
        # cpus_per_task (0 = unset); partitions per device: profiles/slurm/config.yaml
        gpu=lambda wc: 1 if wc.device == "cuda" else 0,
        cpus_per_gpu=lambda wc, threads: threads if wc.device == "cuda" else 0,
        cpus_per_task=lambda wc, threads: 0 if wc.device == "cuda" else threads,
    log:
        "logs/transcribe/{model}/{device}/{entry}/{split}.log",
    conda:
        "../../envs/ptq.yaml"
    shell:
        "HF_HUB_OFFLINE=1 python -m whisper_ptq.cli transcribe --checkpoint {input.checkpoint}"
        " --model-dir {input.model_dir} --features {input.features}"
        " --manifest {input.manifest} --device {wildcards.device} --split {wildcards.split}"
        " --decoding {params.decoding:q} --timing {params.timing:q} --limit '{params.limit}' --threads {threads}"
        " --calib-n {params.calib_n}"
        " --out-hyp {output.hyp} --out-timing {output.timing} > {log} 2>&1"


rule score:
    input:
        hyp="results/{model}/{device}/{entry}/{split}.hyp.jsonl",
        timing="results/{model}/{device}/{entry}/{split}.timing.json",
        meta="results/{model}/checkpoints/{entry}.json",
        fp32_meta="results/{model}/checkpoints/fp32.json",
    output:
        "results/{model}/{device}/{entry}/{split}.score.json",
    log:
        "logs/score/{model}/{device}/{entry}/{split}.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m whisper_ptq.cli score --hyp {input.hyp} --timing {input.timing} --meta {input.meta}"
        " --fp32-meta {input.fp32_meta} --model {wildcards.model} --out {output} > {log} 2>&1"
