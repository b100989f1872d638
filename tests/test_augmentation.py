"""Augmentation: MUSAN / RIR CSVs (legacy header, chunking, use by speechbrain.augment) and
wespeaker's reverb-or-noise choice per utterance."""

import csv

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.augment.time_domain import AddNoise, AddReverb

from sb_sphereface2.data.augmentation import prepare_musan, prepare_rir, write_augment_csv


def rows(path):
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        return next(reader), list(reader)


def test_long_and_stereo_files_are_cut_and_sources_untouched(tmp_path):
    src = tmp_path / "noise"
    src.mkdir()
    long = np.random.default_rng(0).standard_normal(int(2.5 * 16000)).astype(np.float32) * 0.1
    soundfile.write(src / "long.wav", long, 16000, subtype="FLOAT")
    soundfile.write(src / "stereo.flac", np.zeros((8000, 2), np.float32), 16000)
    before = (src / "long.wav").read_bytes()
    header, body = rows(write_augment_csv(src, tmp_path / "out" / "noise.csv", max_seconds=1.0))
    assert header == ["ID", "duration", "wav", "wav_format", "wav_opts"]
    durations = sorted(float(r[1]) for r in body)
    assert durations == [0.5, 0.5, 1.0, 1.0]
    pieces = [soundfile.read(r[2], dtype="float32")[0] for r in body if r[0].startswith("long")]
    np.testing.assert_allclose(np.concatenate(pieces), long, atol=1e-4)  # 16-bit pieces
    assert all(r[3] == "wav" and r[4] == "" for r in body)
    assert (src / "long.wav").read_bytes() == before


def test_skip_when_unchanged_redo_when_changed(tmp_path):
    src = tmp_path / "rirs"
    src.mkdir()
    soundfile.write(src / "a.wav", np.eye(1, 800)[0], 16000)
    out = tmp_path / "out"
    path = prepare_rir(src, out)
    stamp = (out / "rir.csv").stat().st_mtime_ns
    assert prepare_rir(src, out) == path and (out / "rir.csv").stat().st_mtime_ns == stamp
    soundfile.write(src / "b.wav", np.eye(1, 800)[0], 16000)
    assert len(rows(prepare_rir(src, out))[1]) == 2


def test_csvs_drive_speechbrain_augment(tmp_path):
    musan = tmp_path / "musan"
    rng = np.random.default_rng(1)
    for kind in ("noise", "speech", "music"):
        (musan / kind / "x").mkdir(parents=True)
        soundfile.write(musan / kind / "x" / "a.wav", rng.standard_normal(24000) * 0.1, 16000)
    csvs = prepare_musan(musan, tmp_path / "out")
    rir_dir = tmp_path / "rir"
    rir_dir.mkdir()
    soundfile.write(rir_dir / "r.wav", np.exp(-np.arange(2000) / 300) * rng.standard_normal(2000), 16000)
    clean = torch.randn(3, 16000) * 0.1
    noisy = AddNoise(csv_file=csvs["noise"], snr_low=0, snr_high=0)(clean, torch.ones(3))
    assert noisy.shape == clean.shape and not torch.allclose(noisy, clean)
    reverbed = AddReverb(csv_file=prepare_rir(rir_dir, tmp_path / "out"))(clean)
    assert reverbed.shape == clean.shape and not torch.allclose(reverbed, clean)


def test_bad_augmentation_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing MUSAN subfolder"):
        prepare_musan(tmp_path, tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"junk")
    with pytest.raises(ValueError, match="x.wav: unreadable audio file"):
        write_augment_csv(tmp_path / "bad", tmp_path / "out" / "bad.csv")
    assert not (tmp_path / "out" / "bad.csv").exists()


class _Tag(torch.nn.Module):
    """Replaces a transform: writes its tag into every sample it receives."""

    def __init__(self, tag):
        super().__init__()
        self.tag = tag

    def forward(self, wavs, lengths=None):
        return torch.full_like(wavs, float(self.tag))


def test_reverb_or_noise_proportions():
    """wespeaker's choice per utterance: augmented with p = 0.6, then reverb or noise 50/50,
    the noise category in proportion to MUSAN's file counts (930 noise, 426 speech, 660 music)."""
    from sb_sphereface2.data.augmentation import ReverbOrNoise

    torch.manual_seed(0)
    augment = ReverbOrNoise("/nonexistent", augment_prob=0.6)
    counts = torch.tensor([930.0, 426.0, 660.0])
    augment._parts = (_Tag(1), {"noise": _Tag(2), "speech": _Tag(3), "music": _Tag(4)}, counts / counts.sum())
    n = 20000
    out, lengths = augment(torch.zeros(n, 3), torch.ones(n))
    tags = out[:, 0]
    assert bool((out == tags[:, None]).all()) and torch.equal(lengths, torch.ones(n))
    share = {t: float((tags == t).float().mean()) for t in range(5)}
    expected = {0: 0.4, 1: 0.3}
    expected.update({2 + k: 0.3 * float(c / counts.sum()) for k, c in enumerate(counts)})
    for tag, p in expected.items():  # 5 binomial standard deviations
        assert abs(share[tag] - p) < 5 * (p * (1 - p) / n) ** 0.5, (tag, share[tag], p)


def test_reverb_or_noise_reads_its_csvs_lazily_and_names_a_missing_one(tmp_path):
    from sb_sphereface2.data.augmentation import ReverbOrNoise

    augment = ReverbOrNoise(tmp_path, augment_prob=1.0)  # nothing read yet
    with pytest.raises(FileNotFoundError, match="musan_noise.csv"):
        augment(torch.zeros(2, 100), torch.ones(2))
