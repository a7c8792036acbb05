"""TextGridCorpus, read_audio, TextGrid and tracks I/O on hand-made files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.corpus import (
    CorpusError,
    Interval,
    TextGridCorpus,
    Track,
    Utterance,
    load_tracks,
    read_audio,
    read_textgrid,
    save_tracks,
    validate_alignment,
    write_textgrid,
)

SR = 16000
TIERS = {
    "phones": [Interval(0.10, 0.25, "hh"), Interval(0.25, 0.40, "ay"), Interval(0.55, 0.70, "m")],
    "words": [Interval(0.10, 0.40, "hi"), Interval(0.55, 0.70, "m")],
}


def _sine(freq: float, dur: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(dur * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _utt(folder, name, audio, sr=SR, tiers=TIERS, duration=None, text=None):
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(str(folder / f"{name}.wav"), audio, sr, subtype="PCM_16")
    if tiers is not None:
        write_textgrid(folder / f"{name}.TextGrid", tiers, duration or len(audio) / sr)
    if text is not None:
        (folder / f"{name}.json").write_text(json.dumps({"text": text}))
    return folder / f"{name}.wav"


def test_round_trip_audio_tiers_text_speaker(tmp_path):
    audio = _sine(440, 0.8, SR)
    _utt(tmp_path / "spkA", "u1", audio, text="hi m")
    _utt(tmp_path / "spkB", "u2", audio[: SR // 2], tiers={"phones": [Interval(0.0, 0.5, "s")]})
    c = TextGridCorpus(tmp_path)
    assert len(c) == 2
    assert c.ids == ["spkA__u1", "spkB__u2"]
    u = c[0]
    assert (u.id, u.speaker, u.text, u.sample_rate) == ("spkA__u1", "spkA", "hi m", SR)
    assert u.audio.dtype == np.float32 and u.audio.shape == (12800,)
    np.testing.assert_allclose(u.audio, audio, atol=1 / 32768)  # PCM_16 quantisation
    assert u.duration == pytest.approx(0.8)
    assert u.tier("phones") == TIERS["phones"]  # empty gaps are dropped on reading
    assert u.tier("words") == TIERS["words"]
    assert c[1].text == "" and c[1].tier("phones") == [Interval(0.0, 0.5, "s")]
    assert c.num_samples(0) == 12800 and c.num_samples(1) == 8000
    assert len(TextGridCorpus(tmp_path, max_utterances=1)) == 1
    assert TextGridCorpus(tmp_path, speaker_from="prefix")[0].speaker == "u1"


def test_read_textgrid_keeps_exact_times_and_drops_empty_labels(tmp_path):
    tiers = {"phones": [Interval(0.123456, 0.2, "a"), Interval(0.2, 0.3, " "), Interval(0.3, 0.4, "b")]}
    write_textgrid(tmp_path / "x.TextGrid", tiers, 0.5)
    assert read_textgrid(tmp_path / "x.TextGrid") == {
        "phones": [Interval(0.123456, 0.2, "a"), Interval(0.3, 0.4, "b")]
    }


def test_resampling_warns_and_resamples(tmp_path):
    path = _utt(tmp_path, "lo", _sine(500, 1.0, 8000), sr=8000)
    with pytest.warns(UserWarning, match=r"lo\.wav: sample rate 8000 Hz, resampled to 16000 Hz"):
        audio = read_audio(path, SR)
    assert audio.shape == (16000,) and audio.dtype == np.float32
    # the 500 Hz tone survives: compare with the same tone generated at 16 kHz (away from the edges)
    ref = _sine(500, 1.0, SR)
    np.testing.assert_allclose(audio[400:-400], ref[400:-400], atol=2e-3)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) == 500  # 1 s of audio: bin k = k Hz
    assert TextGridCorpus(tmp_path).num_samples(0) == 16000  # length at the corpus rate, from the header


def test_stereo_is_downmixed_with_warning(tmp_path):
    stereo = np.stack([np.full(1600, 0.5), np.full(1600, -0.1)], axis=1).astype(np.float32)  # (n, 2)
    sf.write(str(tmp_path / "st.wav"), stereo, SR, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"st\.wav: 2 channels, downmixed to mono"):
        audio = read_audio(tmp_path / "st.wav", SR)
    assert audio.shape == (1600,)
    np.testing.assert_allclose(audio, 0.2, atol=1e-6)


def test_corrupt_wav_names_the_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    with pytest.raises(CorpusError, match=r"cannot read audio file .*bad\.wav"):
        read_audio(tmp_path / "bad.wav", SR)
    write_textgrid(tmp_path / "bad.TextGrid", TIERS, 1.0)
    c = TextGridCorpus(tmp_path)
    with pytest.raises(CorpusError, match=r"bad\.wav"):
        c[0]
    with pytest.raises(CorpusError, match=r"bad\.wav"):
        c.num_samples(0)


def test_missing_textgrid_is_an_error_unless_allowed(tmp_path):
    _utt(tmp_path, "a", _sine(300, 0.8, SR))
    _utt(tmp_path, "b", _sine(300, 0.8, SR), tiers=None)
    with pytest.raises(CorpusError, match=r"1 wav files have no TextGrid.*b\.wav"):
        TextGridCorpus(tmp_path)
    c = TextGridCorpus(tmp_path, require_textgrid=False)
    assert c[1].tiers == {} and c[0].tier("words") == TIERS["words"]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        TextGridCorpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match="holds no .wav files"):
        TextGridCorpus(tmp_path)


def test_interval_beyond_audio_end_names_the_utterance(tmp_path):
    # TextGrid says 1.0 s, audio is 0.5 s: the 'm' phone (0.55-0.70) lies past the end
    _utt(tmp_path / "spk", "short", _sine(300, 0.5, SR), duration=1.0)
    c = TextGridCorpus(tmp_path)
    with pytest.raises(
        CorpusError, match=r"'spk__short'.*tier 'phones' interval 'm' ends at 0\.700 s.*0\.500 s"
    ):
        c[0]


def test_validate_alignment_rejects_empty_intervals_and_allows_tolerance():
    audio = np.zeros(8000, np.float32)  # 0.5 s
    ok = Utterance("u", audio, SR, tiers={"phones": [Interval(0.4, 0.51, "a")]})
    validate_alignment(ok)  # 10 ms past the end is within the default 20 ms tolerance
    bad = Utterance("u", audio, SR, tiers={"phones": [Interval(0.3, 0.3, "a")]})
    with pytest.raises(CorpusError, match=r"'u'.*'phones'.*end <= start"):
        validate_alignment(bad)


def test_missing_tier_names_tier_and_utterance(tmp_path):
    _utt(tmp_path / "spk", "u1", _sine(300, 0.8, SR))
    u = TextGridCorpus(tmp_path)[0]
    with pytest.raises(CorpusError, match=r"'spk__u1'.*u1\.wav.*no tier 'syllables'.*\['phones', 'words'\]"):
        u.tier("syllables")


def test_tracks_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tracks = {
        "ema": Track(200.0, rng.standard_normal((160, 3)).astype(np.float32), ("ttx", "tty", "lix")),
        "f0": Track(100.0, np.linspace(80, 120, 80, dtype=np.float32)[:, None], ("f0",)),
    }
    save_tracks(tmp_path / "t.npz", tracks)
    back = load_tracks(tmp_path / "t.npz")
    assert sorted(back) == ["ema", "f0"]
    for k, tr in tracks.items():
        assert back[k].rate == tr.rate and back[k].names == tr.names
        np.testing.assert_array_equal(back[k].values, tr.values)
    # beside a wav, the corpus attaches them to the utterance
    _utt(tmp_path / "c", "u1", _sine(300, 0.8, SR))
    save_tracks(tmp_path / "c" / "u1.tracks.npz", tracks)
    u = TextGridCorpus(tmp_path / "c")[0]
    assert u.tracks["ema"].values.shape == (160, 3) and u.tracks["f0"].names == ("f0",)
    np.testing.assert_array_equal(u.tracks["ema"].values, tracks["ema"].values)


def test_track_shape_mismatch_and_unreadable_tracks(tmp_path):
    with pytest.raises(CorpusError, match=r"\(10, 2\) do not match 3 names"):
        Track(100.0, np.zeros((10, 2), np.float32), ("a", "b", "c"))
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(CorpusError, match=r"cannot read tracks file .*x\.npz"):
        load_tracks(tmp_path / "x.npz")


def test_fingerprint_follows_the_audio_contents_not_the_file_times(tmp_path, monkeypatch):
    import os

    from src.datamodules import corpus as corpus_mod

    path = _utt(tmp_path, "a", _sine(300, 0.8, SR))
    _utt(tmp_path, "b", _sine(500, 0.8, SR))
    fp = TextGridCorpus(tmp_path).fingerprint
    assert (tmp_path / ".audio_hashes.json").is_file()
    hashed = []
    real = corpus_mod.file_sha256
    monkeypatch.setattr(corpus_mod, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    assert TextGridCorpus(tmp_path).fingerprint == fp and hashed == []  # cached: nothing re-read
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same contents
    assert TextGridCorpus(tmp_path).fingerprint == fp and hashed == ["a.wav"]
    # different samples, same length and size, mtime set back: the contents decide
    st = path.stat()
    sf.write(str(path), _sine(310, 0.8, SR), SR, subtype="PCM_16")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp2 = TextGridCorpus(tmp_path).fingerprint
    assert fp2 != fp and hashed == ["a.wav", "a.wav"]
    assert TextGridCorpus(tmp_path, max_utterances=1).fingerprint != fp2  # the ids count too


def test_fingerprint_without_a_writable_cache(tmp_path):
    _utt(tmp_path / "c", "a", _sine(300, 0.8, SR))
    fp = TextGridCorpus(tmp_path / "c").fingerprint
    (tmp_path / "c" / ".audio_hashes.json").unlink()
    (tmp_path / "c" / ".audio_hashes.json").mkdir()  # cannot be written (as a read-only root)
    assert TextGridCorpus(tmp_path / "c").fingerprint == fp
    assert TextGridCorpus(tmp_path / "c", hash_cache=tmp_path / "elsewhere.json").fingerprint == fp
    assert (tmp_path / "elsewhere.json").is_file()


def _tracks(rate=200.0, n=160, k=3, values=None):
    v = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32) if values is None else values
    return {"ema": Track(rate, v, tuple(f"c{i}" for i in range(v.shape[1])))}


@pytest.mark.parametrize("declared", [100.0, 400.0])
def test_track_rate_that_disagrees_with_the_audio_names_file_and_durations(tmp_path, declared):
    _utt(tmp_path, "u1", _sine(300, 0.8, SR))
    save_tracks(tmp_path / "u1.tracks.npz", _tracks(rate=declared, n=160))  # 160 rows = 0.8 s at 200 Hz
    c = TextGridCorpus(tmp_path)
    dur = 160 / declared
    msg = rf"u1\.tracks\.npz: track 'ema' lasts {dur:.3f} s \(160 rows at the declared {declared:g} Hz\) but the audio lasts 0\.800 s.*200 Hz"
    with pytest.raises(CorpusError, match=msg):
        c.annotation(0)
    with pytest.raises(CorpusError, match=msg):
        c[0]


def test_track_duration_tolerance_is_a_parameter(tmp_path):
    _utt(tmp_path, "u1", _sine(300, 0.8, SR))
    save_tracks(tmp_path / "u1.tracks.npz", _tracks(n=180))  # 0.9 s: 0.1 s over (5 % of 0.8 s is 0.04 s)
    # 180 rows over 0.8 s also imply 225 Hz (the rate check, tests/datamodules/test_track_checks.py): off here
    loose = TextGridCorpus(tmp_path, track_rate_tolerance=None)
    assert loose.annotation(0).tracks["ema"].values.shape == (180, 3)
    with pytest.raises(CorpusError, match=r"lasts 0\.900 s .* audio lasts 0\.800 s \(allowed difference 0\.050 s\)"):
        TextGridCorpus(tmp_path, track_tolerance=0.05).annotation(0)


def test_object_array_names_give_a_clear_error(tmp_path):
    v = np.zeros((10, 2), np.float32)
    np.savez(tmp_path / "t.npz", **{"ema.values": v, "ema.rate": np.asarray(200.0),
                                    "ema.names": np.array(["a", "b"], dtype=object)})  # fmt: skip
    with pytest.raises(CorpusError, match=r"t\.npz: ema\.names .*names must be a string array"):
        load_tracks(tmp_path / "t.npz")
    np.savez(tmp_path / "m.npz", **{"ema.values": v, "ema.rate": np.asarray(200.0)})
    with pytest.raises(CorpusError, match=r"m\.npz: track 'ema' lacks \['ema\.names'\]"):
        load_tracks(tmp_path / "m.npz")
    np.savez(tmp_path / "s.npz", **{"ema.values": v, "ema.rate": np.asarray(200.0), "ema.names": np.array(["a", "b", "c"])})
    with pytest.raises(CorpusError, match=r"s\.npz: track 'ema': track values \(10, 2\) do not match 3 names"):
        load_tracks(tmp_path / "s.npz")


def test_speaker_split_needs_speakers_and_a_flat_folder_says_to_use_prefix(tmp_path):
    _utt(tmp_path / "flat", "spk1_a", _sine(300, 0.8, SR))
    _utt(tmp_path / "flat", "spk2_b", _sine(300, 0.8, SR))
    flat = TextGridCorpus(tmp_path / "flat")
    assert not flat.speakers_known()
    with pytest.raises(CorpusError, match=r"split\.by=speaker .* 2 of 2 utterances .*spk1_a\.wav.*data\.speaker_from=prefix"):
        flat.require_speakers()
    by_prefix = TextGridCorpus(tmp_path / "flat", speaker_from="prefix")
    assert by_prefix.speakers_known() and [by_prefix.speaker(i) for i in range(2)] == ["spk1", "spk2"]
    by_prefix.require_speakers()
    _utt(tmp_path / "nested" / "spkA", "a", _sine(300, 0.8, SR))
    assert TextGridCorpus(tmp_path / "nested").speakers_known()
    with pytest.raises(CorpusError, match="speaker_from must be"):
        TextGridCorpus(tmp_path / "flat", speaker_from="folder")


def test_annotation_reads_tiers_without_audio_and_checks_against_the_header(tmp_path):
    _utt(tmp_path / "spk", "ok", _sine(300, 0.8, SR), text="hi m")
    _utt(tmp_path / "spk", "short", _sine(300, 0.5, SR), duration=1.0)
    c = TextGridCorpus(tmp_path)
    a = c.annotation(0)
    assert a.audio.size == 0 and a.text == "hi m" and a.speaker == "spk" == c.speaker(0)
    assert a.tier("phones") == TIERS["phones"]
    assert c.annotation(0) is a  # memoised
    with pytest.raises(CorpusError, match=r"'spk__short'.*ends at 0\.700 s, beyond the audio end 0\.500 s"):
        c.annotation(1)


# ------------------------------------------------------------------ track_items and NaN channels


class _Acts:
    """The part of an activation cache that track_items reads: ids, offsets, frame times (100 Hz)."""

    def __init__(self, corpus, frame_rate=100.0):
        self.ids, self.path, self.frame_rate = corpus.ids, "fake-cache", frame_rate
        self.lengths = [int(corpus.num_samples(i) / SR * frame_rate) for i in range(len(corpus))]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def frame_times(self, u):
        return np.arange(self.lengths[u]) / self.frame_rate


def _nan_corpus(tmp_path, dead_in=(1,), dead_channel=1):
    """3 utterances of 0.5 s with a 3-channel 100 Hz track; ``dead_channel`` all-NaN in ``dead_in``;
    channel 2 NaN in frames 10-19 of utterance 0."""
    for u in range(3):
        _utt(tmp_path / "spk", f"u{u}", _sine(300, 0.5, SR), tiers={"phones": [Interval(0.0, 0.5, "a")]})
        v = np.tile(np.arange(50, dtype=np.float32)[:, None], (1, 3)) + 100 * u
        if u in dead_in:
            v[:, dead_channel] = np.nan
        if u == 0:
            v[10:20, 2] = np.nan
        save_tracks(tmp_path / "spk" / f"u{u}.tracks.npz", {"ema": Track(100.0, v, ("c0", "c1", "c2"))})
    return TextGridCorpus(tmp_path)


def test_track_items_drops_an_all_nan_channel_not_the_frames(tmp_path, caplog):
    from src.datamodules.alignment import track_items

    c = _nan_corpus(tmp_path)
    acts = _Acts(c)
    with caplog.at_level("WARNING"):
        it = track_items(acts, c, "ema")
    assert it.names == ("c0", "c2")  # c1 is NaN in all of utterance 1: left out, not utterance 1's frames
    assert it.counts["channels_dropped_all_nan"] == 1 and it.counts["channel_all_nan_utterances/c1"] == 1
    assert it.counts["frames_nan"] == 10  # only utterance 0's frames where the kept c2 is NaN
    assert len(it.rows) == 150 - 10 and sorted(set(it.utt.tolist())) == [0, 1, 2]
    assert not np.isnan(it.values).any()
    assert "['c1']" in caplog.text and "u1.wav" in caplog.text
    # only the probed channels decide which frames go: c0 alone keeps all 150 frames
    only = track_items(acts, c, "ema", channels=["c0"])
    assert only.names == ("c0",) and len(only.rows) == 150 and only.counts["frames_nan"] == 0
    # a named channel is kept: its NaN frames (all of utterance 1) are dropped instead
    named = track_items(acts, c, "ema", channels=["c1", "c0"])
    assert named.names == ("c1", "c0") and len(named.rows) == 100 and 1 not in set(named.utt.tolist())
    np.testing.assert_array_equal(named.values[:3], [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(CorpusError, match=r"track 'ema' has no channels \['cx'\]"):
        track_items(acts, c, "ema", channels=["cx"])


def test_track_items_errors_name_the_channel_and_a_file(tmp_path):
    from src.datamodules.alignment import track_items

    c = _nan_corpus(tmp_path / "a", dead_in=(0, 1, 2))
    with pytest.raises(CorpusError, match=r"channel\(s\) \['c1'\] have no value at any frame time of the 3 utterances \(e\.g\. .*u0\.wav\)"):
        track_items(_Acts(c), c, "ema", channels=["c1"])
    assert track_items(_Acts(c), c, "ema").names == ("c0", "c2")
    for u in range(2):
        _utt(tmp_path / "b", f"u{u}", _sine(300, 0.5, SR), tiers={"phones": [Interval(0.0, 0.5, "a")]})
        save_tracks(tmp_path / "b" / f"u{u}.tracks.npz",
                    {"ema": Track(100.0, np.full((50, 1), np.nan, np.float32), ("c0",))})  # fmt: skip
    c = TextGridCorpus(tmp_path / "b")
    with pytest.raises(CorpusError, match=r"every channel \['c0'\] is NaN in every frame of some utterance \(e\.g\. .*u0\.wav\)"):
        track_items(_Acts(c), c, "ema")
