from whisper_ptq.data import known_md5
from whisper_ptq.modeling import source_fingerprint


rule download:
    """Fetch one LibriSpeech split archive (URL from `librispeech_url`), check its md5 and
    extract it atomically."""
    output:
        archive="data/archives/{split}.tar.gz",
        split_dir=directory("data/LibriSpeech/{split}"),
    log:
        "logs/download/{split}.log",
    conda:
        "../../envs/data.yaml"
    params:
        base_url=config["librispeech_url"],
        # the checksum it will check (config md5, or a file:// mirror's md5sum.txt line):
        # an archive replaced with its md5 updated re-runs the download
        md5=lambda wc: known_md5(
            config["librispeech_url"], wc.split, config["md5"].get(wc.split)
        ),
    shell:
        "python -m whisper_ptq.cli download --base-url {params.base_url:q} --split {wildcards.split}"
        " --md5 '{params.md5}' --archive {output.archive} --out {output.split_dir}"
        " > {log} 2>&1"


rule model:
    """Resolve the model source (hub id or local directory) into data/models/<model>."""
    output:
        directory("data/models/{model}"),
    log:
        "logs/model/{model}.log",
    conda:
        "../../envs/data.yaml"
    params:
        source=lambda wc: STUDY.models[wc.model],
        # a digest of the source's config and weights (whisper_ptq.modeling.source_fingerprint):
        # a directory re-converted in place re-runs the copy
        fingerprint=lambda wc: source_fingerprint(STUDY.models[wc.model]),
    shell:
        "python -m whisper_ptq.cli model --source {params.source:q} --out {output} > {log} 2>&1"


# a checkpoint: its manifest fixes how many transcribe shards a split has (common.smk)
checkpoint features:
    """Log-mel feature cache of one split for one model (noisy splits: noise added to the
    clean audio first)."""
    input:
        # a noisy derived split (test-clean+white10) is made from its clean split's audio
        split_dir=lambda wc: f"data/LibriSpeech/{noise.base_split(wc.split)}",
        model_dir="data/models/{model}",
    output:
        tensors="data/features/{model}/{split}.safetensors",
        manifest="data/features/{model}/{split}.manifest.jsonl",
    log:
        "logs/features/{model}/{split}.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 60 * attempt,  # minutes; more on a retry
    shell:
        "HF_HUB_OFFLINE=1 python -m whisper_ptq.cli features --split-dir {input.split_dir}"
        " --model-dir {input.model_dir} --split {wildcards.split}"
        " --out-tensors {output.tensors} --out-manifest {output.manifest} > {log} 2>&1"
