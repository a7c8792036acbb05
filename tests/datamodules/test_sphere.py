"""NIST SPHERE reader on files written byte for byte as ../shared/CORPORA.md §5.2 shows."""

from __future__ import annotations

import numpy as np
import pytest

from src.datamodules.corpus import CorpusError
from src.datamodules.sphere import audio_info, read_audio_file, read_sphere, read_sphere_header
from tests.corpus_writers.timit import write_sphere

# the TIMIT header of CORPORA.md §5.2, verbatim (sample_count changed to the test's length)
HEADER_LINES = [
    "NIST_1A",
    "   1024",
    "database_id -s5 TIMIT",
    "database_version -s3 1.0",
    "utterance_id -s8 cjf0_sa1",
    "channel_count -i 1",
    "sample_count -i 9",
    "sample_rate -i 16000",
    "sample_min -i -2191",
    "sample_max -i 2790",
    "sample_n_bytes -i 2",
    "sample_byte_format -s2 {fmt}",
    "sample_sig_bits -i 16",
    "end_head",
]
SAMPLES = np.array([0, 1, -1, 2790, -2191, 32767, -32768, 100, -100], dtype=np.int16)


def _literal(path, fmt: str, samples=SAMPLES, pad=b" "):
    head = ("\n".join(HEADER_LINES).format(fmt=fmt) + "\n").encode()
    head += pad * (1024 - len(head))
    body = samples.astype("<i2" if fmt == "01" else ">i2").tobytes()
    path.write_bytes(head + body)
    return path


@pytest.mark.parametrize("fmt", ["01", "10"])
def test_literal_header_and_samples(tmp_path, fmt):
    p = _literal(tmp_path / "SA1.WAV", fmt)
    hdr = read_sphere_header(p)
    assert hdr.header_size == 1024
    assert hdr.fields == {
        "database_id": "TIMIT", "database_version": "1.0", "utterance_id": "cjf0_sa1", "channel_count": 1,
        "sample_count": 9, "sample_rate": 16000, "sample_min": -2191, "sample_max": 2790, "sample_n_bytes": 2,
        "sample_byte_format": fmt, "sample_sig_bits": 16,
    }  # fmt: skip
    assert (hdr.sample_count, hdr.sample_rate, hdr.channel_count) == (9, 16000, 1)
    x, _ = read_sphere(p)
    assert x.shape == (9, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], SAMPLES.astype(np.float32) / 32768)  # soundfile's PCM_16 scaling
    assert audio_info(p) == (9, 16000)
    np.testing.assert_array_equal(read_audio_file(p, 16000), SAMPLES.astype(np.float32) / 32768)


def test_padding_content_is_ignored(tmp_path):
    p = _literal(tmp_path / "a.wav", "01", pad=b"\x00")  # padding content is undefined (CORPORA.md §5.2)
    np.testing.assert_array_equal(read_sphere(p)[0][:, 0] * 32768, SAMPLES)


def test_writer_matches_literal_layout(tmp_path):
    """tests/corpus_writers' write_sphere writes the same bytes as the literal header above."""
    a = _literal(tmp_path / "a.wav", "10")
    b = write_sphere(tmp_path / "b.wav", SAMPLES, byte_format="10", sample_min=-2191, sample_max=2790)
    assert a.read_bytes() == b.read_bytes()


def test_riff_is_sniffed_not_by_extension(tmp_path):
    import soundfile as sf

    p = tmp_path / "SA1.WAV"
    sf.write(str(p), SAMPLES.astype(np.float32) / 32768, 16000, subtype="PCM_16", format="WAV")
    np.testing.assert_array_equal(read_audio_file(p, 16000), SAMPLES.astype(np.float32) / 32768)
    assert audio_info(p) == (9, 16000)


def test_stereo_and_resampling_warn(tmp_path):
    st = np.stack([SAMPLES, -SAMPLES], axis=1)  # (9, 2)
    p = write_sphere(tmp_path / "s.wav", st)
    x, hdr = read_sphere(p)
    assert hdr.channel_count == 2
    np.testing.assert_array_equal(x * 32768, st.astype(np.float32))
    with pytest.warns(UserWarning, match="downmixed"):
        read_audio_file(p, 16000)


def test_compressed_file_names_the_command(tmp_path):
    p = write_sphere(tmp_path / "SA1.WAV", SAMPLES, coding="pcm,embedded-shorten-v2.00")
    with pytest.raises(CorpusError, match=r"SA1\.WAV is compressed.*shorten.*sph2pipe -f wav"):
        read_sphere_header(p)
    p2 = write_sphere(tmp_path / "b.wav", SAMPLES, byte_format="shortpack-v0")
    with pytest.raises(CorpusError, match=r"b\.wav.*shortpack-v0.*sph2pipe"):
        read_audio_file(p2, 16000)


def test_truncated_and_bad_files(tmp_path):
    p = write_sphere(tmp_path / "t.wav", SAMPLES)
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(CorpusError, match=r"t\.wav is truncated.*9 samples.*1042 bytes.*1038 bytes"):
        read_sphere_header(p)
    q = tmp_path / "x.wav"
    q.write_bytes(b"NIST_1A\n   1024\nsample_rate -i 16000\n" + b" " * 1000)
    with pytest.raises(CorpusError, match=r"x\.wav.*end_head"):
        read_sphere_header(q)
    q.write_bytes(b"NIST_1A\n   1024\nsample_rate -i 16000\nend_head\n".ljust(1024))
    with pytest.raises(CorpusError, match=r"x\.wav.*sample_count"):
        read_sphere_header(q)
