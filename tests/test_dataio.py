"""CSV training path: one read per utterance per epoch at a random speed with a
speed-specific label, crops after the speed change, reproducible draws; label encoder;
utterance datasets; bad input."""

import collections
import os
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from numpy.lib.stride_tricks import sliding_window_view
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.dataio.encoder import CategoricalEncoder

from sb_sphereface2.data.audio import change_speed, random_speed_crop
from sb_sphereface2.data.dataio import training_dataset, utterance_dataset
from sb_sphereface2.data.speakers import check_classes, label_encoder, read_speakers
from sb_sphereface2.data.speed import SPEEDS, speed_labels

HEADER = "ID,duration,wav,start,stop,spk_id\n"
RATE = 16000


def tone_hz(index):
    return 300.0 + 40.0 * index


def write_corpus(folder, lengths, speakers):
    """One WAV per utterance (a tone of ``tone_hz(index)`` plus a little noise, so that
    every stretch is unique), a training CSV; returns (csv, rows)."""
    rng = np.random.default_rng(7)
    rows = []
    for index, (length, speaker) in enumerate(zip(lengths, speakers)):
        path = folder / f"u{index}.wav"
        t = np.arange(length) / RATE
        audio = 0.5 * np.sin(2 * np.pi * tone_hz(index) * t) + 0.01 * rng.standard_normal(length)
        soundfile.write(path, audio.astype(np.float32), RATE, subtype="FLOAT")
        rows.append({"ID": f"{speaker}/s/{index}", "wav": str(path), "start": 0, "stop": length, "spk_id": speaker,
                     "hz": tone_hz(index)})
    csv_path = folder / "train.csv"
    csv_path.write_text(HEADER + "".join(
        f"{r['ID']},{r['stop'] / RATE:.3f},{r['wav']},0,{r['stop']},{r['spk_id']}\n" for r in rows))
    return str(csv_path), rows


@pytest.fixture
def corpus(tmp_path):
    lengths = [40000 + 1000 * i for i in range(12)]
    speakers = [f"spk{i % 4}" for i in range(12)]
    csv_path, rows = write_corpus(tmp_path, lengths, speakers)
    encoder = label_encoder(speed_labels(read_speakers(csv_path)), str(tmp_path / "label_encoder.txt"))
    return csv_path, {r["ID"]: r for r in rows}, encoder


def locate(crop, audio):
    """Offsets where crop occurs exactly inside audio (independent of the crop code)."""
    starts = np.flatnonzero((sliding_window_view(audio, 4)[: len(audio) - len(crop) + 1] == crop[:4]).all(axis=1))
    return [int(s) for s in starts if np.array_equal(audio[s : s + len(crop)], crop)]


def epoch_items(data, epoch_source, epoch, num_workers=0):
    epoch_source.current = epoch
    loader = make_dataloader(data, batch_size=4, num_workers=num_workers, collate_fn=PaddedBatch)
    items = {}
    for batch in loader:
        for key, sig, label in zip(batch.id, batch.sig.data, batch.spk_id_encoded.data[:, 0]):
            assert key not in items
            items[key] = (sig.clone(), int(label))
    return items


def test_an_epoch_reads_each_utterance_once_with_a_speed_specific_label(corpus):
    csv_path, rows, encoder = corpus
    clock = SimpleNamespace(current=1)
    data = training_dataset(csv_path, encoder, crop_seconds=1.5, seed=11, epoch_source=clock)
    assert len(data) == len(rows)  # one item per utterance, not one per speed
    speeds_seen = collections.Counter()
    for epoch in (1, 2, 3, 4, 5, 6):
        items = epoch_items(data, clock, epoch)
        assert sorted(items) == sorted(rows)
        for key, (sig, label) in items.items():
            assert sig.shape == (24000,)
            name = encoder.decode_ndim(label)
            speaker, _, tag = name.partition("@sp")
            assert speaker == rows[key]["spk_id"]
            speed = float(tag) if tag else 1.0
            speeds_seen[speed] += 1
            audio, _ = soundfile.read(rows[key]["wav"], dtype="float32")
            # The audio's speed, measured from its tone, is the labelled one.
            spectrum = np.abs(np.fft.rfft(sig.numpy() * np.hanning(len(sig))))
            measured = np.argmax(spectrum) * RATE / len(sig) / rows[key]["hz"]
            assert measured == pytest.approx(speed, abs=0.02)
            if speed == 1.0:
                assert len(locate(sig.numpy(), audio)) == 1
    assert set(speeds_seen) == set(SPEEDS)
    assert min(speeds_seen.values()) >= 12  # 72 draws, uniform over 3 speeds: 24 expected each


def test_draws_are_reproducible_per_epoch_differ_across_epochs_and_ignore_workers(corpus):
    csv_path, _, encoder = corpus
    clock = SimpleNamespace(current=1)
    data = training_dataset(csv_path, encoder, crop_seconds=1.0, seed=5, epoch_source=clock)
    first = epoch_items(data, clock, 1)
    again = epoch_items(data, clock, 1, num_workers=2)  # other processes, other order
    assert first.keys() == again.keys()
    for key in first:
        # The same draws (crop, speed); resampling in a worker process (one thread) may
        # round differently from the main process, so samples agree to float precision.
        assert first[key][1] == again[key][1]
        torch.testing.assert_close(first[key][0], again[key][0], rtol=0, atol=1e-5)
    second = epoch_items(data, clock, 2, num_workers=2)
    changed = [key for key in first if not torch.allclose(first[key][0], second[key][0], rtol=0, atol=1e-3)]
    assert len(changed) >= len(first) - 1
    other_seed = training_dataset(csv_path, encoder, crop_seconds=1.0, seed=6, epoch_source=clock)
    third = epoch_items(other_seed, clock, 1)
    assert sum(not torch.equal(first[k][0], third[k][0]) for k in first) >= len(first) - 1


def test_without_speed_perturbation_reads_speed_one_with_a_pretrained_three_speed_head(corpus, tmp_path):
    csv_path, rows, encoder = corpus  # the stage-1 encoder: 3 x speakers classes
    assert len(encoder) == 3 * 4
    check_classes(encoder, speed_labels(read_speakers(csv_path), (1.0,)), "stage 1")
    clock = SimpleNamespace(current=1)
    data = training_dataset(csv_path, encoder, crop_seconds=1.0, speeds=(1.0,), epoch_source=clock)
    for epoch in (1, 2):
        for key, (sig, label) in epoch_items(data, clock, epoch).items():
            assert encoder.decode_ndim(label) == rows[key]["spk_id"]
            audio, _ = soundfile.read(rows[key]["wav"], dtype="float32")
            assert len(locate(sig.numpy(), audio)) == 1
    plain = label_encoder(speed_labels(read_speakers(csv_path), (1.0,)), str(tmp_path / "plain.txt"))
    assert list(plain.lab2ind) == ["spk0", "spk1", "spk2", "spk3"]
    with pytest.raises(ValueError, match="first: spk9"):
        check_classes(encoder, ["spk0", "spk9"], "stage 1")


def test_label_encoder_order_is_sorted_is_reused_and_rebuilt_when_classes_change(corpus, tmp_path):
    csv_path, _, encoder = corpus
    path = tmp_path / "label_encoder.txt"
    # The classes (speakers x speeds) in sorted order.
    assert [encoder.ind2lab[i] for i in range(len(encoder))] == sorted(
        [f"spk{i}" for i in range(4)] + [f"spk{i}@sp{s}" for i in range(4) for s in ("0.9", "1.1")])
    loaded = CategoricalEncoder()
    loaded.load(str(path))  # SpeechBrain's own class reads the file
    assert loaded.lab2ind == encoder.lab2ind
    mtime = path.stat().st_mtime_ns
    assert label_encoder(speed_labels(read_speakers(csv_path)), str(path)).lab2ind == encoder.lab2ind
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    rebuilt = label_encoder(["new1", "new2"], str(path))
    assert list(rebuilt.lab2ind) == ["new1", "new2"]
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]  # no temporary left


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_factor_scales_frequency(tmp_path, speed):
    wav = tmp_path / "tone.wav"
    t = np.arange(3 * RATE) / RATE
    soundfile.write(wav, 0.5 * np.sin(2 * np.pi * 500 * t), RATE, subtype="FLOAT")
    crop = random_speed_crop(str(wav), 0, len(t), speed, RATE, np.random.default_rng(0)).numpy()
    spectrum = np.abs(np.fft.rfft(crop * np.hanning(len(crop))))
    peak_hz = np.argmax(spectrum) * RATE / len(crop)
    assert crop.shape == (RATE,)
    assert peak_hz == pytest.approx(500 * speed, abs=2)
    assert len(change_speed(torch.zeros(9900), speed)) == pytest.approx(9900 / speed, abs=1)


def test_short_utterances_are_repeated_up_to_the_crop(tmp_path):
    audio = np.linspace(-0.5, 0.5, 10000).astype(np.float32)
    wav = tmp_path / "short.wav"
    soundfile.write(wav, audio, RATE, subtype="FLOAT")
    crop = random_speed_crop(str(wav), 0, 10000, 1.0, 25000, np.random.default_rng(0)).numpy()
    np.testing.assert_array_equal(crop, np.concatenate([audio, audio, audio[:5000]]))
    slow = random_speed_crop(str(wav), 0, 10000, 0.9, 25000, np.random.default_rng(0)).numpy()
    stretched = change_speed(torch.from_numpy(audio), 0.9).numpy()  # 11112 samples
    np.testing.assert_array_equal(slow, np.concatenate([stretched, stretched, stretched[: 25000 - 2 * len(stretched)]]))


@pytest.mark.parametrize("damage", ["missing", "garbage", "rate", "range"])
def test_bad_audio_gives_one_line_naming_the_file(tmp_path, damage):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(16000, np.float32), 8000 if damage == "rate" else RATE)
    if damage == "missing":
        wav.unlink()
    if damage == "garbage":
        wav.write_bytes(b"not audio at all" * 100)
    stop = 99999 if damage == "range" else 16000
    path = tmp_path / "train.csv"
    path.write_text(HEADER + f"a/s/1,1.0,{wav},0,{stop},a\n")
    encoder = label_encoder(["a"], str(tmp_path / "enc.txt"))
    data = training_dataset(str(path), encoder, crop_seconds=0.5, speeds=(1.0,))
    with pytest.raises(ValueError) as excinfo:
        data[0]
    message = str(excinfo.value)
    assert str(wav) in message and "\n" not in message
    expected = {"missing": "unreadable", "garbage": "unreadable", "rate": "sample rate 8000 Hz", "range": "the file has"}
    assert expected[damage] in message


def test_batches_through_speechbrain_dataloader_carry_load_time(corpus):
    csv_path, _, encoder = corpus
    data = training_dataset(csv_path, encoder, crop_seconds=1.0, epoch_source=SimpleNamespace(current=1))
    loader = make_dataloader(data, batch_size=8, shuffle=True, num_workers=0)
    batch = next(iter(loader))
    assert batch.sig.data.shape == (8, 16000)
    assert torch.all(batch.sig.lengths == 1.0)
    assert batch.spk_id_encoded.data.shape == (8, 1)
    assert batch.load_seconds.shape == (8,) and torch.all(batch.load_seconds > 0)


def test_utterance_dataset_reads_whole_files(corpus):
    csv_path, rows, _ = corpus
    data = utterance_dataset(csv_path)
    assert len(data) == len(rows)
    for index in (0, len(data) - 1):
        item = data[index]
        audio, _ = soundfile.read(rows[item["id"]]["wav"], dtype="float32")
        np.testing.assert_array_equal(item["sig"].numpy(), audio)
        assert item["spk_id"] == rows[item["id"]]["spk_id"]
    assert utterance_dataset(csv_path, max_seconds=0.5)[0]["sig"].shape == (8000,)
