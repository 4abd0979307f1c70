"""Independent check of the pipeline's WER: a bare greedy ``generate`` loop, no pipeline code.

Reads FLACs straight from an extracted split, runs the Hugging Face processor and
``model.generate`` one utterance at a time, normalizes with the Whisper English normalizer
and scores with ``jiwer.wer`` over the same utterance ids as a pipeline ``*.hyp.jsonl``:

    python scripts/bare_wer.py MODEL_DIR SPLIT_DIR results/<model>/cpu/fp32/<split>.hyp.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def bare_wer(model_dir, split_dir, ids) -> float:
    import jiwer
    import soundfile as sf
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    from whisper_normalizer.english import EnglishTextNormalizer

    proc = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    kwargs = {"max_new_tokens": 440}
    if getattr(model.generation_config, "is_multilingual", False):
        kwargs.update(language="en", task="transcribe")
    norm = EnglishTextNormalizer()
    refs, hyps = [], []
    for uid in ids:
        [flac] = Path(split_dir).rglob(f"{uid}.flac")
        trans = flac.with_name("-".join(uid.split("-")[:2]) + ".trans.txt")
        ref = dict(line.split(" ", 1) for line in trans.read_text().splitlines() if line)[uid]
        audio, sr = sf.read(flac, dtype="float32")
        feats = proc(audio, sampling_rate=sr, return_tensors="pt").input_features
        with torch.no_grad():
            out = model.generate(feats, **kwargs)
        refs.append(norm(ref))
        hyps.append(norm(proc.batch_decode(out, skip_special_tokens=True)[0]))
    return 100 * jiwer.wer(refs, hyps)


if __name__ == "__main__":
    model_dir, split_dir, hyp = sys.argv[1:4]
    ids = [json.loads(line)["id"] for line in open(hyp)]
    score = Path(hyp.replace(".hyp.jsonl", ".score.json"))
    wer = bare_wer(model_dir, split_dir, ids)
    pipeline = json.loads(score.read_text())["wer"] if score.exists() else None
    print(json.dumps({"utterances": len(ids), "bare_wer": wer, "pipeline_wer": pipeline}))
