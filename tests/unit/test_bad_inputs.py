"""Bad inputs that once slipped through (issue 13): each is now one clear error naming the
thing at fault, or a correct result. Fabricated inputs only: no ../shared needed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from archives import tar_gz

from whisper_ptq import PipelineError
from whisper_ptq.config import Study
from whisper_ptq.data import expected_md5, extract_split, md5_of
from whisper_ptq.modeling import resolve_model

FP32 = {"fp32": {"library": "fp", "scheme": "fp32"}}


def model_dir(path, model_type="whisper"):
    """A directory shaped like a Hugging Face checkpoint (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "d_model": 8}))
    rng = np.random.default_rng(0)
    save_file({"w": rng.normal(size=(512, 256)).astype(np.float32)}, str(path / "model.safetensors"))
    return path


def study(model, **over):
    return Study({"model": str(model), "devices": "cpu", "splits": ["test-clean"],
                  "entries": FP32, **over})


# slip 5 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("only", ["", " , ", []])
def test_empty_only_is_an_error_not_every_entry(tmp_path, only):
    with pytest.raises(PipelineError, match="config 'only' is empty"):
        study(model_dir(tmp_path / "m"), only=only)
    assert study(tmp_path / "m", only=None).selected == ["fp32"]  # null: every entry


# slip 3 -------------------------------------------------------------------------------------

def test_a_non_whisper_model_stops_validation_naming_its_directory(tmp_path):
    bert = model_dir(tmp_path / "bert", model_type="bert")
    with pytest.raises(PipelineError, match=f"model directory {bert} is not a Whisper checkpoint: "
                                            "its config.json has model_type 'bert'"):
        study(bert)
    # the model step itself refuses it too, and leaves nothing that looks complete
    with pytest.raises(PipelineError, match="not a Whisper checkpoint"):
        resolve_model(str(bert), tmp_path / "data" / "models" / "bert")
    assert not (tmp_path / "data").exists()  # check_source ran before anything was made
    (bert / "config.json").write_text("[1, 2")
    with pytest.raises(PipelineError, match=f"model directory {bert}: config.json is not a JSON"):
        study(bert)


# slip 6: messages ---------------------------------------------------------------------------

def test_an_unknown_library_names_its_entry(tmp_path):
    entries = {**FP32, "q8": {"library": "quantoo", "scheme": "int8"}}
    with pytest.raises(PipelineError, match="config entry 'q8': unknown library 'quantoo'; known: "):
        study(model_dir(tmp_path / "m"), entries=entries)


PREFIX = "LibriSpeech/test-clean/"
GOOD = {PREFIX + "1/2/1-2.trans.txt": b"1-2-0000 HELLO\n", PREFIX + "1/2/1-2-0000.flac": b"x"}


def test_a_path_traversal_archive_is_reported_as_such(tmp_path):
    evil = PREFIX + "../../../escaped.txt"
    (tmp_path / "a").mkdir()
    archive = tar_gz(tmp_path / "a" / "test-clean.tar.gz", {**GOOD, evil: b"pwned"})
    dest = tmp_path / "out" / "LibriSpeech" / "test-clean"
    with pytest.raises(PipelineError) as e:
        extract_split(archive, "test-clean", dest)
    msg = str(e.value)
    assert msg == (f"archive {archive}: member {evil!r} points outside {PREFIX} (path traversal); "
                   "refusing to extract it, nothing was kept")
    assert not dest.exists() and not list(tmp_path.rglob("escaped.txt"))
    assert list(dest.parent.iterdir()) == []  # no .tmp-* left behind


@pytest.mark.parametrize("members, msg", [
    ({PREFIX + "1/2/1-2-0000.flac": b"x", PREFIX + "1/2/1-2.trans.txt": b"1-2-0001 HI\n"},
     "1 utterance(s) without a reference line in any *.trans.txt, e.g. {root}/1/2/1-2-0000.flac"),
    ({**GOOD, PREFIX + "1/2/1-2.trans.txt": b"1-2-0000\n"},
     "{root}/1/2/1-2.trans.txt line 1: utterance 1-2-0000 has an empty reference"),
])
def test_layout_errors_name_the_archive_never_a_temporary_directory(tmp_path, members, msg):
    archive = tar_gz(tmp_path / "test-clean.tar.gz", members)
    with pytest.raises(PipelineError) as e:
        extract_split(archive, "test-clean", tmp_path / "out" / "test-clean")
    assert msg.format(root=f"{archive}: LibriSpeech/test-clean") in str(e.value)
    assert ".tmp-" not in str(e.value)


# slip 2: what the download and model rules' params see ---------------------------------------

def test_download_param_follows_the_mirrors_checksum(tmp_path):
    from whisper_ptq.data import known_md5

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = tar_gz(mirror / "test-clean.tar.gz", GOOD)
    (mirror / "md5sum.txt").write_text(f"{md5_of(archive)}  test-clean.tar.gz\n")
    url = mirror.as_uri()
    before = known_md5(url, "test-clean")
    assert before == md5_of(archive) == expected_md5(url, "test-clean")
    # a fixed archive with its md5sum.txt line updated: a new param, so download re-runs
    tar_gz(archive, {**GOOD, PREFIX + "1/2/1-2-0000.flac": b"fixed"})
    (mirror / "md5sum.txt").write_text(f"{md5_of(archive)}  test-clean.tar.gz\n")
    assert known_md5(url, "test-clean") == md5_of(archive) != before
    assert known_md5(url, "test-clean", "A" * 32) == "a" * 32  # config md5 wins
    assert known_md5(url, "test-other") == ""  # not listed: the step reports it
    assert known_md5((tmp_path / "nowhere").as_uri(), "test-clean") == ""
    assert known_md5("https://www.openslr.org/resources/12", "test-clean") == ""  # no network


def test_model_fingerprint_follows_config_and_weights_not_mtimes(tmp_path):
    import os

    from whisper_ptq.modeling import source_fingerprint

    src = model_dir(tmp_path / "m")
    fp = source_fingerprint(str(src))
    assert fp.startswith("sha256:") and fp == source_fingerprint(str(src))
    shutil.copytree(src, tmp_path / "copy")  # same content, new mtimes: same fingerprint
    assert source_fingerprint(str(tmp_path / "copy")) == fp
    os.utime(src / "model.safetensors", (0, 0))
    assert source_fingerprint(str(src)) == fp

    cfg = (src / "config.json").read_text()
    (src / "config.json").write_text(cfg.replace('"d_model": 8', '"d_model": 9'))
    assert source_fingerprint(str(src)) != fp
    (src / "config.json").write_text(cfg)

    # re-converted weights of the same shapes (same size and header), new values
    from safetensors.numpy import save_file

    w = np.random.default_rng(1).normal(size=(512, 256)).astype(np.float32)
    save_file({"w": w}, str(src / "model.safetensors"))
    assert (src / "model.safetensors").stat().st_size == (tmp_path / "copy/model.safetensors").stat().st_size
    assert source_fingerprint(str(src)) != fp
    # a tokenizer file counts too (copied with the model)
    shutil.copytree(tmp_path / "copy", tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    assert source_fingerprint(str(tmp_path / "tok")) != fp
    assert source_fingerprint("openai/whisper-small") == "hub:openai/whisper-small"
