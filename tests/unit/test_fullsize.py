"""benchmarks/fullsize.py build: a synthetic split the pipeline's download + extract accept."""

import sys
import tarfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow  # packs the real mini archive's 40 speakers
def test_build_packs_real_flacs_under_unique_ids_with_their_md5(mini_dir, tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import fullsize
    finally:
        sys.path.remove(str(BENCH))
    from whisper_ptq.data import download, expected_md5, extract_split, list_utterances

    fullsize.build(tmp_path / "full", ["test-clean"], 250, mini_dir)  # 120 per copy: 3 copies
    url = f"file://{tmp_path / 'full'}"
    md5 = expected_md5(url, "test-clean")
    archive = download(f"{url}/test-clean.tar.gz", tmp_path / "dl.tar.gz", md5)
    utts = list_utterances(extract_split(archive, "test-clean", tmp_path / "split"), "test-clean")
    assert len(utts) == len({u.id for u in utts}) == 250
    assert len({u.speaker for u in utts}) == 40

    with tarfile.open(mini_dir / "test-clean.tar.gz") as tar:
        originals = {Path(m.name).stem: tar.extractfile(m).read() for m in tar if m.name.endswith(".flac")}
        refs = {}
        for m in tar:
            if m.name.endswith(".trans.txt"):
                for line in tar.extractfile(m).read().decode().splitlines():
                    uid, _, text = line.partition(" ")
                    refs[uid] = text
    for u in utts:  # chapter C, copy k -> chapter C*10+k; the bytes and words are the original's
        spk, chap, utt = u.id.split("-")
        orig = f"{spk}-{int(chap) // 10}-{utt}"
        assert u.path.read_bytes() == originals[orig] and u.reference == refs[orig]
    assert sum(u.id.split("-")[1].endswith("2") for u in utts) == 250 - 240
    # deterministic: a rebuild gives the same archive
    fullsize.build(tmp_path / "again", ["test-clean"], 250, mini_dir)
    assert (tmp_path / "again" / "md5sum.txt").read_text() == (tmp_path / "full" / "md5sum.txt").read_text()
