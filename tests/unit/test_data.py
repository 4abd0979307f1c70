"""Archive download (file:// URLs), md5 checks, atomic extraction, reference parsing."""

import shutil

import pytest
from archives import tar_gz

from whisper_ptq import PipelineError
from whisper_ptq.data import (archive_url, download, expected_md5, extract_split,
                              fetch_md5sums, list_utterances, md5_of)


def file_url(path):
    return path.resolve().as_uri()


def test_md5sum_txt_of_mirror_gives_the_archive_checksum(fake_mirror):
    sums = fetch_md5sums(file_url(fake_mirror))
    assert set(sums) == {"test-clean.tar.gz", "test-other.tar.gz"}
    assert sums["test-other.tar.gz"] == md5_of(fake_mirror / "test-other.tar.gz")
    assert expected_md5(file_url(fake_mirror), "test-clean") == md5_of(fake_mirror / "test-clean.tar.gz")
    assert expected_md5(file_url(fake_mirror), "test-clean", "ABC" * 10 + "AB") == "abc" * 10 + "ab"


def test_split_missing_from_md5sum_txt_is_named(fake_mirror):
    with pytest.raises(PipelineError, match="no checksum for dev-clean.tar.gz"):
        expected_md5(file_url(fake_mirror), "dev-clean")


def test_download_file_url_and_extract(fake_mirror, tmp_path):
    url = archive_url(file_url(fake_mirror), "test-other")
    md5 = md5_of(fake_mirror / "test-other.tar.gz")
    archive = download(url, tmp_path / "a" / "test-other.tar.gz", md5)
    split = extract_split(archive, "test-other", tmp_path / "LibriSpeech" / "test-other")
    utts = list_utterances(split, "test-other")
    assert len(utts) == 9  # archives.make_mirror: 3 speakers × 3
    assert len({u.speaker for u in utts}) == 3
    assert all(u.path.is_file() and u.reference.isupper() for u in utts)
    assert [p.name for p in tmp_path.joinpath("LibriSpeech").iterdir()] == ["test-other"]


def test_wrong_md5_keeps_nothing(fake_mirror, tmp_path):
    dest = tmp_path / "test-clean.tar.gz"
    with pytest.raises(PipelineError, match="md5 mismatch"):
        download(archive_url(file_url(fake_mirror), "test-clean"), dest, "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="cannot fetch"):
        download((tmp_path / "nope.tar.gz").as_uri(), tmp_path / "x.tar.gz", "0" * 32)


def test_truncated_archive_leaves_no_split_dir(fake_mirror, tmp_path):
    data = (fake_mirror / "test-other.tar.gz").read_bytes()
    bad = tmp_path / "test-other.tar.gz"
    bad.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "out" / "test-other"
    with pytest.raises(PipelineError, match="truncated or corrupt"):
        extract_split(bad, "test-other", dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temp dir left behind either


def _tar_with(tmp_path, files: dict[str, bytes]):
    return tar_gz(tmp_path / "test-clean.tar.gz", files)


def test_utterance_without_reference_line_is_named(fake_split_dir, tmp_path):
    copy = shutil.copytree(fake_split_dir, tmp_path / "test-clean")
    trans = next(copy.rglob("*.trans.txt"))
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(lines[1:]) + "\n")
    dropped = lines[0].split()[0]
    with pytest.raises(PipelineError, match=f"without a reference line.*{dropped}.flac"):
        list_utterances(copy, "test-clean")


def test_reference_without_audio_is_named(tmp_path):
    archive = _tar_with(tmp_path, {
        "LibriSpeech/test-clean/1/2/1-2.trans.txt": b"1-2-0000 HELLO WORLD\n",
    })
    with pytest.raises(PipelineError, match="without a FLAC file, e.g. 1-2-0000"):
        extract_split(archive, "test-clean", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_without_the_split_is_rejected(tmp_path):
    archive = _tar_with(tmp_path, {"LibriSpeech/dev-clean/1/2/1-2.trans.txt": b"x Y\n"})
    with pytest.raises(PipelineError, match="no files under LibriSpeech/test-clean/"):
        extract_split(archive, "test-clean", tmp_path / "out")


def test_atomic_write_removes_leftovers_of_a_killed_try(tmp_path):
    from whisper_ptq.io import atomic_path, write_json

    (tmp_path / ".x.json.tmp-abc").write_text("half")
    (tmp_path / ".ckpt.tmp-def").mkdir()
    (tmp_path / ".other.json.tmp-keep").write_text("someone else's")
    write_json(tmp_path / "x.json", {"a": 1})
    with atomic_path(tmp_path / "ckpt", is_dir=True) as d:
        (d / "w").write_text("w")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.tmp-keep", "ckpt", "x.json"]


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from whisper_ptq.io import atomic_path, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {})
        with atomic_path(tmp_path / "d", is_dir=True):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
