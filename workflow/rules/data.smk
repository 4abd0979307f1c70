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
        # its spec holds the md5 it checks: an archive replaced, md5 updated, re-runs it
        **step("download"),
    shell:
        STEP


rule model:
    """Resolve the model source (hub id or local directory) into data/models/<model>."""
    output:
        model_dir=directory("data/models/{model}"),
    log:
        "logs/model/{model}.log",
    conda:
        "../../envs/data.yaml"
    params:
        # its spec holds a digest of the source's config and weights: a directory
        # re-converted in place re-runs the copy
        **step("model"),
    shell:
        STEP


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
    params:
        **step("features"),
    shell:
        STEP
