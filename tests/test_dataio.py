"""Training and utterance datasets: crop length and content, speed, labels, short clips."""

import csv
import logging

import numpy as np
import pytest
import soundfile
import torch
from numpy.lib.stride_tricks import sliding_window_view
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataloader import make_dataloader

from sb_sphereface2.data.prepare import prepare_voxceleb
from sb_sphereface2.data.dataio import (
    load_label_encoder,
    random_crop,
    training_dataset,
    utterance_dataset,
)

HEADER = "ID,duration,wav,start,stop,spk_id,speed\n"


@pytest.fixture(scope="module")
def prepared(librispeech_voxceleb_tree, tmp_path_factory):
    save = tmp_path_factory.mktemp("dataio")
    tree = librispeech_voxceleb_tree
    result = prepare_voxceleb(tree.root, save, trial_lists=tree.trial_lists, dev_speakers=3, speed_perturb=True)
    encoder = load_label_encoder(result["train_csv"], str(save / "label_encoder.txt"))
    return result, encoder, save


def rows_of(path):
    with open(path, newline="") as handle:
        return {row["ID"]: row for row in csv.DictReader(handle)}


def locate(crop, audio):
    """Offsets where crop occurs exactly inside audio (independent of the crop code)."""
    starts = np.flatnonzero((sliding_window_view(audio, 4)[: len(audio) - len(crop) + 1] == crop[:4]).all(axis=1))
    return [int(s) for s in starts if np.array_equal(audio[s : s + len(crop)], crop)]


def test_training_items_are_crops_of_their_files_with_labels(prepared):
    result, encoder, _ = prepared
    rows = rows_of(result["train_csv"])
    data = training_dataset(result["train_csv"], encoder, crop_seconds=1.5)
    long_enough = [i for i, r in rows.items() if float(r["duration"]) >= 1.5]
    assert 0 < len(long_enough) < len(rows)  # a few 1.5 s segments at speed 1.1 are dropped
    with data.output_keys_as(["id"]):
        assert sorted(item["id"] for item in data) == sorted(long_enough)
    torch.manual_seed(0)
    offsets = []
    for index in range(0, len(data), 97):
        item = data[index]
        row = rows[item["id"]]
        assert item["sig"].shape == (24000,) and item["sig"].dtype == torch.float32
        assert item["spk_id_encoded"].tolist() == [encoder.encode_label(row["spk_id"])]
        if row["speed"] == "1.0":
            audio, _ = soundfile.read(row["wav"], dtype="float32")
            found = locate(item["sig"].numpy(), audio)
            assert len(found) >= 1
            offsets.append(int(found[0]))
    assert len(set(offsets)) > 1  # crops are random, not always at the start


def test_label_encoder_covers_perturbed_speakers_and_is_reused(prepared, tmp_path):
    result, encoder, save = prepared
    speakers = {row["spk_id"] for row in rows_of(result["train_csv"]).values()}
    assert len(encoder) == len(speakers) and set(encoder.lab2ind) == speakers
    assert [encoder.encode_label(s) for s in sorted(speakers)] == list(range(len(speakers)))
    path = save / "label_encoder.txt"
    mtime = path.stat().st_mtime_ns
    assert len(load_label_encoder(result["train_csv"], str(path))) == len(speakers)
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    other = tmp_path / "train.csv"
    other.write_text(HEADER + "a/s/1,3.0,x.wav,0,48000,newspk,1.0\n")
    rebuilt = load_label_encoder(str(other), str(path))
    assert list(rebuilt.lab2ind) == ["newspk"]


def test_without_speed_perturbation_keeps_only_original_rows_and_all_classes(prepared):
    result, encoder, _ = prepared
    rows = rows_of(result["train_csv"])
    data = training_dataset(result["train_csv"], encoder, crop_seconds=1.0, speed_perturbed=False)
    originals = [i for i, r in rows.items() if r["speed"] == "1.0"]
    assert len(data) == len(originals) == len(rows) // 3
    assert len(encoder) == 3 * len({rows[i]["spk_id"] for i in originals})
    with data.output_keys_as(["id"]):
        assert sorted(item["id"] for item in data) == sorted(originals)


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_factor_scales_frequency(tmp_path, speed):
    wav = tmp_path / "tone.wav"
    t = np.arange(3 * 16000) / 16000
    soundfile.write(wav, 0.5 * np.sin(2 * np.pi * 500 * t), 16000, subtype="FLOAT")
    crop = random_crop(str(wav), 0, len(t), speed, 16000).numpy()
    spectrum = np.abs(np.fft.rfft(crop * np.hanning(len(crop))))
    peak_hz = np.argmax(spectrum) * 16000 / len(crop)
    assert crop.shape == (16000,)
    assert peak_hz == pytest.approx(500 * speed, abs=2)


def test_short_clips_are_dropped_with_a_count_and_none_left_is_an_error(tmp_path, caplog):
    long_wav, short_wav = tmp_path / "long.wav", tmp_path / "short.wav"
    soundfile.write(long_wav, np.zeros(40000, np.float32), 16000)
    soundfile.write(short_wav, np.zeros(16000, np.float32), 16000)
    path = tmp_path / "train.csv"
    path.write_text(
        HEADER
        + f"a/s/1,2.5,{long_wav},0,40000,a,1.0\n"
        + f"b/s/1,1.0,{short_wav},0,16000,b,1.0\n"
        + f"a/s/1@sp0.9,2.7778,{long_wav},0,40000,a@sp0.9,0.9\n"
        + f"a/s/1@sp1.1,2.2727,{long_wav},0,40000,a@sp1.1,1.1\n"
    )
    encoder = load_label_encoder(str(path), str(tmp_path / "enc.txt"))
    with caplog.at_level(logging.INFO, logger="sb_sphereface2.data.dataio"):
        data = training_dataset(str(path), encoder, crop_seconds=2.4)
    assert sorted(item["id"] for item in data) == ["a/s/1", "a/s/1@sp0.9"]
    assert "dropped 2 of 4 clips shorter than the 2.4 s crop" in caplog.text
    with pytest.raises(ValueError, match="no clip is at least 3 s long") as excinfo:
        training_dataset(str(path), encoder, crop_seconds=3.0)
    assert "\n" not in str(excinfo.value)


def test_pipeline_meeting_a_short_clip_names_the_file(tmp_path):
    wav = tmp_path / "short.wav"
    soundfile.write(wav, np.zeros(16000, np.float32), 16000)
    path = tmp_path / "train.csv"
    path.write_text(HEADER + f"a/s/1,9.0,{wav},0,16000,a,1.0\n")  # duration column is wrong
    encoder = load_label_encoder(str(path), str(tmp_path / "enc.txt"))
    data = training_dataset(str(path), encoder, crop_seconds=2.0)
    with pytest.raises(ValueError) as excinfo:
        data[0]
    message = str(excinfo.value)
    assert str(wav) in message and "shorter than the 2 s crop" in message and "\n" not in message


def test_batches_through_speechbrain_dataloader(prepared):
    result, encoder, _ = prepared
    data = training_dataset(result["train_csv"], encoder, crop_seconds=1.0)
    loader = make_dataloader(data, batch_size=8, shuffle=True, num_workers=0, collate_fn=PaddedBatch)
    batch = next(iter(loader))
    assert batch.sig.data.shape == (8, 16000)
    assert torch.all(batch.sig.lengths == 1.0)
    assert batch.spk_id_encoded.data.shape == (8, 1)


def test_utterance_dataset_reads_whole_files(prepared):
    result, _, _ = prepared
    rows = rows_of(result["test_csv"])
    data = utterance_dataset(result["test_csv"])
    assert len(data) == len(rows)
    for index in (0, len(data) - 1):
        item = data[index]
        audio, _ = soundfile.read(rows[item["id"]]["wav"], dtype="float32")
        np.testing.assert_array_equal(item["sig"].numpy(), audio)
        assert item["spk_id"] == item["id"].split("/")[0]
    first = utterance_dataset(result["test_csv"], max_seconds=0.5)[0]
    assert first["sig"].shape == (8000,)
    perturbed = [i for i, r in rows_of(result["train_csv"]).items() if r["speed"] == "0.9"][0]
    train = utterance_dataset(result["train_csv"])
    with train.output_keys_as(["id", "sig"]):
        item = next(x for x in train if x["id"] == perturbed)
    frames = soundfile.info(rows_of(result["train_csv"])[perturbed]["wav"]).frames
    assert abs(len(item["sig"]) - frames / 0.9) <= 1
