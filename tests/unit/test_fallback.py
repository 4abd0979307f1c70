"""Temperature fallback (decoding.fallback): openai-whisper's rule, run by decode.Transcriber
on transformers models and by the CTranslate2, ONNX Runtime and OpenVINO transcribers;
whisper.cpp, which decodes inside its runtime, is an unsupported row under it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whisper_ptq import PipelineError
from whisper_ptq.config import Study, validate_schema
from whisper_ptq.decode import (Transcriber, compression_ratio, fallback_options,
                                needs_fallback, run, with_fallback)
from whisper_ptq.modeling import load_fp32
from whisper_ptq.schema import schema_default

OPTIONS = {"temperatures": [0.2, 0.6, 1.0], "compression_ratio_threshold": 2.4,
           "logprob_threshold": -1.0, "seed": 0}


def test_a_loop_compresses_past_the_threshold_and_a_sentence_does_not():
    sentence = " He passes abruptly from persons to ideas and numbers, and from ideas to persons."
    loop = " keeping himself" + " aqa'a'a'a'" * 40
    assert compression_ratio(sentence) < 2.4 < compression_ratio(loop)
    assert compression_ratio("") == 0.0
    assert not needs_fallback(sentence, -0.2, OPTIONS)
    assert needs_fallback(loop, -0.2, OPTIONS)
    assert needs_fallback(sentence, -1.5, OPTIONS)  # improbable: openai-whisper's second test


def test_each_temperature_re_decodes_only_what_still_needs_it_and_the_last_is_kept():
    calls = []
    # what each pass gives per utterance: (text, avg logprob); 0 is fine greedy, 1 is fixed at
    # 0.6, 2 never is (kept from the last temperature), 3 is fine greedy
    good, bad = ("a plain sentence", -0.1), ("a plain sentence", -3.0)
    plan = {0.0: {0: good, 1: bad, 2: bad, 3: good}, 0.2: {1: bad, 2: bad},
            0.6: {1: good, 2: bad}, 1.0: {2: bad}}

    def decode(idx, temperature):
        calls.append((temperature, list(idx)))
        got = [plan[temperature][i] for i in idx]
        return [f"{t} {i}@{temperature}" for (t, _), i in zip(got, idx)], [lp for _, lp in got], 10

    texts, kept, tokens = with_fallback(decode, 4, OPTIONS)
    assert calls == [(0.0, [0, 1, 2, 3]), (0.2, [1, 2]), (0.6, [1, 2]), (1.0, [2])]
    assert kept == [0.0, 0.6, 1.0, 0.0]
    assert texts[1].endswith("1@0.6") and texts[2].endswith("2@1.0")
    assert tokens == 40  # every pass's tokens count

    calls.clear()
    plan[0.0] = {i: good for i in range(4)}
    assert with_fallback(decode, 4, OPTIONS)[1] == [0.0] * 4 and len(calls) == 1


def test_fallback_is_off_unless_configured_and_its_defaults_come_from_the_schema():
    config = {"model": "openai/whisper-small", "entries": {"fp32": {"library": "fp", "scheme": "fp32"}}}
    # left out, it is not added: a config without it plans the same transcribe jobs as before
    assert "fallback" not in validate_schema(dict(config))["decoding"]
    assert "fallback" not in schema_default("decoding")
    assert fallback_options({"batch_size": 4}) is None
    filled = validate_schema({**config, "decoding": {"fallback": {"seed": 3}}})["decoding"]["fallback"]
    assert filled == {**schema_default("decoding", "fallback"), "seed": 3}
    assert fallback_options({"fallback": {"seed": 3}}) == filled
    assert filled["temperatures"] == [0.2, 0.4, 0.6, 0.8, 1.0]
    with pytest.raises(PipelineError, match="temperatures"):
        validate_schema({**config, "decoding": {"fallback": {"temperatures": "hot"}}})
    with pytest.raises(PipelineError, match="fallback"):
        validate_schema({**config, "decoding": {"fallback": {"beam": 5}}})


def test_whisper_cpp_is_an_unsupported_row_under_fallback():
    entries = {"fp32": {"library": "fp", "scheme": "fp32"},
               "bnb-nf4": {"library": "bnb", "scheme": "nf4"},
               "ct2-int8": {"library": "ct2", "scheme": "int8"},
               "ort-fp32": {"library": "ort", "scheme": "fp32"},
               "openvino-int8": {"library": "openvino", "scheme": "int8"},
               "whispercpp-q8_0": {"library": "whispercpp", "scheme": "q8_0"}}
    config = validate_schema({"model": "openai/whisper-small", "devices": "cpu",
                              "entries": entries, "decoding": {"fallback": {}}})
    study = Study(config, cuda=False)
    assert study.unsupported() == [{
        "model": "whisper-small", "entry": "whispercpp-q8_0", "device": "cpu",
        "reason": "decoding.fallback: library 'whispercpp' decodes inside its own runtime, whose "
                  "fallback is not openai-whisper's rule"}]
    assert {j.entry for j in study.jobs()} == set(entries) - {"whispercpp-q8_0"}
    del config["decoding"]["fallback"]
    assert not Study(config, cuda=False).unsupported()


def teacher_forced(model, hidden, sequence, prompt_len) -> float:
    """openai-whisper's average log-probability of one generated sequence, by a decoder pass
    over it (untempered, suppressed tokens masked): the reference for the recorder."""
    g = model.generation_config
    with torch.no_grad():
        states = model.model.decoder(input_ids=sequence[None, :-1], encoder_hidden_states=hidden[None],
                                     use_cache=False).last_hidden_state[0]
        generated = sequence[prompt_len:]
        ends = (generated == g.eos_token_id).nonzero()
        n = int(ends[0]) + 1 if len(ends) else len(generated)
        logits = model.proj_out(states[prompt_len - 1:prompt_len - 1 + n]).float()
        logits[:, list(g.suppress_tokens or [])] = -torch.inf
        logits[0, list(g.begin_suppress_tokens or [])] = -torch.inf
        total = torch.log_softmax(logits, -1).gather(1, generated[:n, None]).sum()
    return float(total) / ((n - 1 if len(ends) else n) + 1)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_the_recorded_log_probability_is_the_untempered_one_of_the_tokens_kept(
        model_and_tokenizer, random_features, temperature):
    from whisper_ptq.decode import forced_prompt
    from whisper_ptq.features import FeatureCache

    model, tokenizer = model_and_tokenizer
    decoding = {"max_new_tokens": 12, "fallback": {}}
    transcriber = Transcriber(model, tokenizer, "cpu", decoding)
    cache = FeatureCache(random_features[0])
    feats = torch.stack([cache.get(f"{s}-1-{i:04d}") for s, i in ((1, 0), (1, 1), (2, 0))])
    with torch.no_grad():
        encoded = model.model.encoder(feats)
        texts, logprobs, _ = transcriber._decode(feats, encoded, [0, 2], temperature)
    # the same pass again, to read its sequences (the seed makes it the same)
    kwargs = dict(transcriber.kwargs)
    if temperature:
        from whisper_ptq.decode import sampling_seed

        torch.manual_seed(sampling_seed(0, feats[[0, 2]].numpy(), temperature))
        kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    hidden = encoded.last_hidden_state[[0, 2]]
    with torch.no_grad():
        out = model.generate(encoder_outputs=type(encoded)(last_hidden_state=hidden), **kwargs)
    assert tokenizer.batch_decode(out, skip_special_tokens=True) == texts
    prompt = forced_prompt(model.generation_config, decoding)
    if out.shape[1] < len(prompt) or out[0, :len(prompt)].tolist() != prompt:
        out = torch.cat([torch.tensor(prompt).expand(len(out), -1), out], 1)
    expected = [teacher_forced(model, h, s, len(prompt)) for h, s in zip(hidden, out)]
    assert logprobs == pytest.approx(expected, abs=1e-4)


def test_forced_fallback_samples_reproducibly_and_is_counted(model_and_tokenizer, random_features):
    model, tokenizer = model_and_tokenizer
    # no hypothesis reaches log-probability 0: every one goes through every temperature
    forced = {"batch_size": 3, "max_new_tokens": 12,
              "fallback": {"temperatures": [0.5, 1.0], "logprob_threshold": 0.0}}
    greedy_rows, greedy = run(model, tokenizer, *random_features, "cpu", {**forced, "fallback": None},
                              progress=False)
    rows, timing = run(model, tokenizer, *random_features, "cpu", forced, progress=False)
    again, _ = run(model, tokenizer, *random_features, "cpu", forced, progress=False)
    other, _ = run(model, tokenizer, *random_features, "cpu",
                   {**forced, "fallback": {**forced["fallback"], "seed": 1}}, progress=False)
    assert [r["temperature"] for r in rows] == [1.0] * 6
    assert timing["fallback_utterances"] == 6 and "fallback_utterances" not in greedy
    assert "temperature" not in greedy_rows[0]
    assert [r["hypothesis"] for r in again] == [r["hypothesis"] for r in rows]
    assert [r["hypothesis"] for r in other] != [r["hypothesis"] for r in rows]
    # three passes decode (and count) more tokens than the greedy one
    assert timing["generated_tokens"] > greedy["generated_tokens"]


@pytest.mark.slow
def test_real_speech_keeps_its_greedy_hypotheses_under_default_fallback(tiny_en_dir, real_cache):
    """On clean read speech tiny.en's greedy hypotheses pass both tests: fallback changes
    nothing (and costs one log-softmax per step)."""
    from transformers import WhisperTokenizer

    cache, calib = real_cache
    model = load_fp32(tiny_en_dir)
    tokenizer = WhisperTokenizer.from_pretrained(tiny_en_dir)
    args = (model, tokenizer, cache / "f.safetensors", cache / "m.jsonl", "cpu")
    greedy, _ = run(*args, {"batch_size": 4}, exclude=calib, progress=False)
    rows, timing = run(*args, {"batch_size": 4, "fallback": {}}, exclude=calib, progress=False)
    assert [r["hypothesis"] for r in rows] == [r["hypothesis"] for r in greedy]
    assert [r["temperature"] for r in rows] == [0.0] * len(greedy) == [0.0] * 8
    assert timing["fallback_utterances"] == 0


@pytest.mark.parametrize("library, scheme", [("ct2", "float32"), ("ort", "fp32"),
                                             ("openvino", "fp32")])
def test_runtimes_apply_the_same_rule_to_the_same_log_probabilities(
        distinct_model_dir, tmp_path, monkeypatch, library, scheme):
    """An fp32 runtime's greedy pass gives transformers' tokens and average log-probabilities;
    the utterances the rule sends back are sampled alone, reproducibly, seeded."""
    from graph_runtime import BATCH, ids_of

    from whisper_ptq import decode
    from whisper_ptq.checkpoint import load_checkpoint, save_checkpoint
    from whisper_ptq.decode import make_transcriber
    from whisper_ptq.quantizers import get

    entry = get(library).validate(library, {"library": library, "scheme": scheme})
    save_checkpoint(library, entry, distinct_model_dir, tmp_path / library)
    runtime, _ = load_checkpoint(tmp_path / library, distinct_model_dir, "cpu")
    tok = ids_of(distinct_model_dir)
    decoding = {"max_new_tokens": 12, "fallback": {}}
    seen = []
    monkeypatch.setattr(decode, "needs_fallback", lambda text, lp, options: seen.append(lp))
    got, _ = make_transcriber(runtime, tok, "cpu", decoding)(BATCH)
    want, _ = Transcriber(load_fp32(distinct_model_dir), tok, "cpu", decoding)(BATCH)
    assert got == want and seen[:2] == pytest.approx(seen[2:], abs=1e-3)

    # the second utterance fails its greedy pass and passes at the first temperature
    def second_only(text, lp, options):
        seen.append(lp)
        return len(seen) == 2

    runs = []
    for seed in (0, 0, 1):
        seen.clear()
        monkeypatch.setattr(decode, "needs_fallback", second_only)
        # a job's model, loaded afresh (CTranslate2 seeds a model's sampler once)
        runtime, _ = load_checkpoint(tmp_path / library, distinct_model_dir, "cpu")
        texts, timing = make_transcriber(runtime, tok, "cpu",
                                         {**decoding, "fallback": {"seed": seed}})(BATCH)
        assert timing["temperatures"] == [0.0, 0.2] and len(seen) == 3
        assert texts[0] == want[0] and timing["tokens"] > sum(map(len, texts))
        runs.append(texts[1])
    assert runs[0] == runs[1] != runs[2]


def test_an_utterance_over_30_s_stays_greedy_with_a_null_temperature(model_and_tokenizer, tmp_path):
    from safetensors.numpy import save_file

    from whisper_ptq.io import write_jsonl

    model, tokenizer = model_and_tokenizer
    rng = np.random.default_rng(2)
    ids = {"1-1-0000": 3000, "1-1-0001": 4500}  # frames: 30 s, and 45 s (long-form)
    save_file({i: rng.normal(size=(80, n)).astype(np.float32) for i, n in ids.items()},
              tmp_path / "f.st")
    write_jsonl(tmp_path / "m.jsonl", [{"id": i, "speaker": "1", "duration": n / 100,
                                        "reference": "HELLO", "n_frames": n} for i, n in ids.items()])
    forced = {"batch_size": 2, "max_new_tokens": 4,
              "fallback": {"temperatures": [1.0], "logprob_threshold": 0.0}}
    rows, timing = run(model, tokenizer, tmp_path / "f.st", tmp_path / "m.jsonl", "cpu", forced,
                       progress=False)
    assert {r["id"]: r["temperature"] for r in rows} == {"1-1-0000": 1.0, "1-1-0001": None}
    assert timing["fallback_utterances"] == 1 and timing["longform_seconds"] > 0
