"""Tar shards: packing (layout, atomic, resumable), the epoch plan (each utterance exactly
once, equal batch counts), streaming across processes x workers, equality with the CSV
path, resuming inside an epoch."""

import io
import json
import os
import random
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

from sb_sphereface2.data.dataio import training_dataset
from sb_sphereface2.data.shard_writer import MANIFEST, main as pack_main, pack_shards
from sb_sphereface2.data.shards import ShardDataset, ShardLoader, epoch_plan, shard_loader
from sb_sphereface2.data.speakers import label_encoder, read_speakers
from sb_sphereface2.data.speed import speed_labels

RATE = 16000


def make_corpus(folder, count=23, seed=0):
    """``count`` utterances of 0.6-1.6 s: FLAC files used whole, and every fifth row a
    span of a WAV file; returns (csv path, {ID: row})."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    long_wav = folder / "long.wav"
    soundfile.write(long_wav, (rng.standard_normal(RATE * 8) * 0.1).astype(np.float32), RATE, subtype="FLOAT")
    rows = {}
    for index in range(count):
        speaker = f"spk{index % 5}"
        if index % 5 == 4:
            start = int(rng.integers(0, RATE * 6))
            row = {"ID": f"{speaker}/w/{index}", "wav": str(long_wav), "start": start, "stop": start + RATE, "spk_id": speaker}
        else:
            length = int(rng.integers(RATE * 0.6, RATE * 1.6))
            path = folder / f"{index}.flac"
            soundfile.write(path, rng.standard_normal(length) * 0.1, RATE, subtype="PCM_16")
            row = {"ID": f"{speaker}/f/{index}", "wav": str(path), "start": 0, "stop": length, "spk_id": speaker}
        rows[row["ID"]] = row
    csv_path = folder / "train.csv"
    csv_path.write_text("ID,duration,wav,start,stop,spk_id\n" + "".join(
        f"{r['ID']},{(r['stop'] - r['start']) / RATE:.3f},{r['wav']},{r['start']},{r['stop']},{r['spk_id']}\n"
        for r in rows.values()))
    return str(csv_path), rows


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    csv_path, rows = make_corpus(root / "corpus")
    folder = str(root / "shards")
    manifest = pack_shards(csv_path, folder, utterances_per_shard=5, seed=3)
    encoder = label_encoder(speed_labels(read_speakers(csv_path)), str(root / "label_encoder.txt"))
    return SimpleNamespace(csv=csv_path, rows=rows, folder=folder, manifest=manifest, encoder=encoder)


def test_shards_hold_every_utterance_once_in_webdataset_layout(packed):
    manifest = packed.manifest
    assert [s["utterances"] for s in manifest["shards"]] == [5, 5, 5, 5, 3]
    assert manifest["utterances"] == 23 and manifest["speakers"] == [f"spk{i}" for i in range(5)]
    seen = {}
    for shard in manifest["shards"]:
        path = os.path.join(packed.folder, shard["name"])
        assert os.path.getsize(path) == shard["bytes"]
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len(names) == 2 * shard["utterances"]
            for json_name, flac_name in zip(names[::2], names[1::2]):
                assert json_name.endswith(".json") and flac_name == json_name[:-5] + ".flac"
                meta = json.loads(tar.extractfile(json_name).read())
                data = tar.extractfile(flac_name).read()
                assert meta["ID"] not in seen
                seen[meta["ID"]] = (meta, data)
    assert sorted(seen) == sorted(packed.rows)
    for key, (meta, data) in seen.items():
        row = packed.rows[key]
        assert meta["spk_id"] == row["spk_id"] and meta["samples"] == row["stop"] - row["start"]
        decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        source, _ = soundfile.read(row["wav"], start=row["start"], stop=row["stop"], dtype="float32")
        if row["wav"].endswith(".flac"):
            assert open(row["wav"], "rb").read() == data  # whole FLAC files are copied as they are
        else:
            np.testing.assert_allclose(decoded, source, atol=1 / 32768)  # WAV spans: 16-bit FLAC
    order = [seen_id for seen_id in seen]
    assert order != sorted(order, key=lambda k: int(k.split("/")[-1]))  # utterances shuffled across shards


def test_packing_is_idempotent_resumable_and_follows_its_input(packed, tmp_path):
    folder = tmp_path / "shards"
    csv_path, rows = make_corpus(tmp_path / "corpus", count=7, seed=1)
    first = pack_shards(csv_path, str(folder), utterances_per_shard=3)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert pack_shards(csv_path, str(folder), utterances_per_shard=3) == first
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # nothing rewritten
    # Interrupted after the first shard: the rerun keeps it and writes the rest.
    (folder / MANIFEST).unlink()
    (folder / "shard-000001.tar").unlink()
    (folder / "shard-000002.tar").unlink()
    again = pack_shards(csv_path, str(folder), utterances_per_shard=3)
    assert again == first and (folder / "shard-000000.tar").stat().st_mtime_ns == stamps["shard-000000.tar"]
    # Other settings: the folder is packed anew, without shards of the old packing.
    other = pack_shards(csv_path, str(folder), utterances_per_shard=4)
    assert [s["utterances"] for s in other["shards"]] == [4, 3]
    assert sorted(p.name for p in folder.iterdir()) == ["packing.json", "shard-000000.tar", "shard-000001.tar", MANIFEST]


def test_packing_bad_input_is_one_line(tmp_path, capsys):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(f"ID,duration,wav,start,stop,spk_id\nu1,1.0,{tmp_path / 'missing.flac'},0,16000,s\n")
    assert pack_main([str(csv_path), str(tmp_path / "shards")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.flac" in err and err.startswith("error:")
    assert not (tmp_path / "shards" / MANIFEST).exists()
    assert not [n for n in os.listdir(tmp_path / "shards") if n.endswith(".tar") or ".tmp" in n]
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        ShardDataset(str(tmp_path / "shards"), None, batch_size=2)


@pytest.mark.parametrize("trial", range(40))
def test_epoch_plan_covers_every_utterance_once_with_equal_batch_counts(trial):
    rng = random.Random(trial)
    sizes = [rng.randint(1, 9) for _ in range(rng.randint(1, 12))]
    readers, batch = rng.randint(1, 6), rng.randint(1, 7)
    total = sum(sizes)
    if total < readers or (total // readers) < -(-(-(-total // readers)) // batch):
        with pytest.raises(ValueError, match="utterances"):
            epoch_plan(sizes, readers, batch, seed=1, epoch=trial)
        return
    plan = epoch_plan(sizes, readers, batch, seed=1, epoch=trial)
    covered = [(s, i) for spans, _ in plan for s, a, b in spans for i in range(a, b)]
    assert sorted(covered) == [(s, i) for s, n in enumerate(sizes) for i in range(n)]
    counts = [sum(b - a for _, a, b in spans) for spans, _ in plan]
    assert max(counts) - min(counts) <= 1
    assert len({len(sizes_) for _, sizes_ in plan}) == 1  # same number of batches everywhere
    for (spans, batch_sizes), count in zip(plan, counts):
        assert sum(batch_sizes) == count and all(1 <= b <= batch for b in batch_sizes)
        assert max(batch_sizes) - min(batch_sizes) <= 1


def _epoch(packed, rank, world_size, workers, epoch, batch_size=3, **kwargs):
    dataset = ShardDataset(packed.folder, packed.encoder, batch_size, num_workers=workers, crop_seconds=0.5,
                           seed=9, rank=rank, world_size=world_size, shuffle_buffer=4, **kwargs)
    dataset.set_epoch(epoch)
    loader = ShardLoader(dataset, num_workers=workers)
    batches = [(list(b.id), b.sig.data.clone(), b.spk_id_encoded.data[:, 0].tolist()) for b in loader]
    assert len(batches) == len(loader) == len(dataset)
    return batches


def test_two_processes_with_two_workers_read_every_utterance_exactly_once(packed):
    orders = []
    for epoch in (1, 2):
        per_rank = [_epoch(packed, rank, 2, 2, epoch) for rank in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1])  # equal batch counts: DDP cannot hang
        ids = [key for batches in per_rank for batch in batches for key in batch[0]]
        assert sorted(ids) == sorted(packed.rows)  # 23 utterances, 5 shards, 4 readers
        orders.append(ids)
    assert orders[0] != orders[1]  # shard order and buffer change with the epoch
    assert _epoch(packed, 1, 2, 2, 2)[0][0] == _epoch(packed, 1, 2, 2, 2)[0][0]  # reproducible


def test_shard_items_equal_csv_items_for_the_same_seed_and_epoch(packed):
    clock = SimpleNamespace(current=4)
    csv_data = training_dataset(packed.csv, packed.encoder, crop_seconds=0.5, seed=9, epoch_source=clock)
    with csv_data.output_keys_as(["id", "sig", "spk_id_encoded"]):
        reference = {item["id"]: item for item in csv_data}
    for ids, sigs, labels in _epoch(packed, 0, 1, 0, 4):
        for key, sig, label in zip(ids, sigs, labels):
            assert label == reference[key]["spk_id_encoded"].item()
            tolerance = 0 if packed.rows[key]["wav"].endswith(".flac") else 2e-4  # WAV spans: 16-bit FLAC
            assert torch.allclose(sig, reference[key]["sig"], atol=tolerance, rtol=0)


def test_epoch_comes_from_the_epoch_counter(packed):
    counter = SimpleNamespace(current=1)
    loader = shard_loader(packed.folder, packed.encoder, batch_size=4, num_workers=2, crop_seconds=0.5, seed=9,
                          epoch_source=counter, shuffle_buffer=4)
    first = [list(b.id) for b in loader]
    counter.current = 2
    second = [list(b.id) for b in loader]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == sorted(packed.rows)
    assert first != second
    fixed = _epoch(packed, 0, 1, 2, 2, batch_size=4)
    assert [ids for ids, _, _ in fixed] == second


@pytest.mark.parametrize("workers, done", [(2, 5), (2, 4), (3, 7), (0, 3)])
def test_resuming_inside_an_epoch_goes_on_with_the_same_batches(packed, tmp_path, workers, done):
    counter = SimpleNamespace(current=3)
    make = lambda: shard_loader(packed.folder, packed.encoder, batch_size=2, num_workers=workers,  # noqa: E731
                                crop_seconds=0.5, seed=9, epoch_source=counter, shuffle_buffer=4)
    reference = [(list(b.id), b.sig.data) for b in make()]
    loader = make()
    iterator = iter(loader)
    for _ in range(done):
        next(iterator)
    loader._save(tmp_path / "position")  # an intra-epoch checkpoint after `done` batches
    del iterator
    resumed = make()
    resumed._recover(tmp_path / "position", end_of_epoch=False)
    rest = [(list(b.id), b.sig.data) for b in resumed]
    assert [ids for ids, _ in rest] == [ids for ids, _ in reference[done:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, reference[done:]))
    assert [list(b.id) for b in resumed] == [ids for ids, _ in reference]  # next epoch: from the start
    resumed._recover(tmp_path / "position", end_of_epoch=True)
    assert len(list(resumed)) == len(reference)


def test_worker_count_must_match_and_persistent_workers_are_refused(packed):
    dataset = ShardDataset(packed.folder, packed.encoder, 4, num_workers=2)
    with pytest.raises(ValueError, match="num_workers 1 differs"):
        ShardLoader(dataset, num_workers=1)
    with pytest.raises(ValueError, match="persistent_workers"):
        ShardLoader(dataset, num_workers=2, persistent_workers=True)
    with pytest.raises(ValueError, match="too few|cannot feed"):
        ShardDataset(packed.folder, packed.encoder, 4, num_workers=8, world_size=4, rank=0)
