"""Shared test fixtures (registered by the root conftest.py, so that the doctests of the
package reach them too): small real and synthetic corpora in VoxCeleb layout, a model folder.

Both are built once per test session under pytest's temporary folder and must be
treated as read-only (copy them before damaging files).

``librispeech_voxceleb_tree`` (session scope) -> ``VoxCelebTree``
    Real speech cut from ``data/librispeech-mini`` (shipped in the repository) (251 LibriSpeech speakers,
    one recording each; beside the repository root). Recordings shorter than 6 s are
    left out (223 speakers remain). Each recording gives 4 non-overlapping segments,
    one from each quarter, min(3 s, quarter) long, as FLAC::

        root/<speaker>/s1/00001.flac, 00002.flac   (first half of the recording)
        root/<speaker>/s2/00003.flac, 00004.flac   (second half)

    Fields: ``root`` (Path), ``speakers`` (all, sorted), ``trial_speakers`` (20 held-out
    speakers, every 11th in sorted order), ``trial_lists`` ([Path, Path]: ``trials_a.txt``
    over the first 10 trial speakers, ``trials_b.txt`` over the other 10; outside
    ``root``), ``train_speakers`` (speakers minus trial speakers). Each list: all
    cross-session targets (4 per speaker, 40) and 40 non-targets across speakers, in
    VoxCeleb format (``label enrol.wav test.wav``). Missing source data fails loudly.

``tiny_model_folder`` (session scope) -> Path
    A model folder as ``recipes/VoxCeleb/train.py`` writes it, without training: the
    composed ``hparams/train.yaml`` with ``TINY_MODEL`` sizes (ResNet 4-4-8-8, one block
    per stage, 24 mels, 32-d) and seeded random weights, for the first 12 training
    speakers of ``librispeech_voxceleb_tree`` (speed 1.0 only: 12 classes).

``tiny_model_folders`` (session scope) -> {model block: Path}
    ``tiny_model_folder`` for ``resnet34`` and the same kind of folder, random weights and
    tiny sizes (``TINY_BLOCK_SIZES``), for ``ecapa_tdnn`` and ``speechbrain_resnet``.

``espeak_corpus`` (session scope) -> ``tools.synthetic_corpus.SyntheticCorpus``
    8 espeak-ng speakers x 2 sessions x 2 utterances (3-6 s WAV, 16 kHz), with
    ``trials.txt`` over the last 3 speakers. Needs espeak-ng
    (``apt-get install -y espeak-ng``); fails, never skips, without it.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

LIBRISPEECH_MINI = Path(__file__).resolve().parents[1] / "data" / "librispeech-mini"
SEGMENT_SECONDS = 3.0
MIN_RECORDING_SECONDS = 6.0
NUM_TRIAL_SPEAKERS = 20
# The model of ``tiny_model_folder``: overrides of hparams/train.yaml.
TINY_MODEL = {"n_mels": 24, "emb_dim": 32, "resnet_channels": [4, 4, 8, 8], "resnet_blocks": [1, 1, 1, 1],
              "speed_perturb": False}
TINY_MODEL_SPEAKERS = 12
# Tiny sizes of the other model blocks (``tiny_model_folders``).
TINY_BLOCK_SIZES = {"ecapa_tdnn": {"ecapa_channels": 16},
                    "speechbrain_resnet": {"sb_resnet_channels": [4, 4, 8, 8], "sb_resnet_blocks": [1, 1, 1, 1]}}


@dataclass
class VoxCelebTree:
    """A VoxCeleb-layout corpus made for tests (see the module docstring)."""

    root: Path
    speakers: list
    trial_speakers: list
    trial_lists: list
    train_speakers: list


def _write_trial_list(path, speakers, seed):
    utts = [f"{spk}/s{1 + k // 2}/{k + 1:05d}" for spk in speakers for k in range(4)]
    lines = [
        f"1 {spk}/s1/{a:05d}.flac {spk}/s2/{b:05d}.flac" for spk in speakers for a in (1, 2) for b in (3, 4)
    ]
    rng = np.random.default_rng(seed)
    nontargets = set()
    while len(nontargets) < len(lines):
        i, j = sorted(rng.choice(len(utts), size=2, replace=False))
        if utts[i].split("/")[0] != utts[j].split("/")[0]:
            nontargets.add((utts[i], utts[j]))
    lines += [f"0 {a}.flac {b}.flac" for a, b in sorted(nontargets)]
    order = rng.permutation(len(lines))
    path.write_text("".join(lines[i] + "\n" for i in order))
    return path


@pytest.fixture(scope="session")
def librispeech_voxceleb_tree(tmp_path_factory):
    """Real-speech VoxCeleb-layout tree cut from librispeech-mini (see module docstring)."""
    if not LIBRISPEECH_MINI.is_dir():
        pytest.fail(f"test data missing: {LIBRISPEECH_MINI} (librispeech-mini must sit beside the repository)")
    recordings = sorted(LIBRISPEECH_MINI.glob("*/*/*.flac"))
    if len(recordings) < 200:
        pytest.fail(f"{LIBRISPEECH_MINI}: expected 251 FLAC recordings, found {len(recordings)}")
    base = tmp_path_factory.mktemp("librispeech_voxceleb")
    root = base / "corpus"
    speakers = []
    for recording in recordings:
        audio, rate = soundfile.read(recording, dtype="int16")
        if len(audio) < MIN_RECORDING_SECONDS * rate:
            continue
        speaker = recording.parts[-3]
        quarter = len(audio) // 4
        length = min(int(SEGMENT_SECONDS * rate), quarter)
        for k in range(4):
            begin = k * quarter + (quarter - length) // 2
            folder = root / speaker / f"s{1 + k // 2}"
            folder.mkdir(parents=True, exist_ok=True)
            soundfile.write(folder / f"{k + 1:05d}.flac", audio[begin : begin + length], rate)
        speakers.append(speaker)
    speakers.sort()
    trial_speakers = speakers[::11][:NUM_TRIAL_SPEAKERS]
    trial_lists = [
        _write_trial_list(base / "trials_a.txt", trial_speakers[:10], seed=1),
        _write_trial_list(base / "trials_b.txt", trial_speakers[10:], seed=2),
    ]
    train_speakers = sorted(set(speakers) - set(trial_speakers))
    return VoxCelebTree(root, speakers, trial_speakers, trial_lists, train_speakers)


@pytest.fixture(scope="session")
def tiny_model_folder(librispeech_voxceleb_tree, tmp_path_factory):
    """A recipe model folder with seeded random weights (see module docstring)."""
    import torch

    from sb_sphereface2.data.speakers import label_encoder
    from sb_sphereface2.hparams import load_recipe_hparams
    from sb_sphereface2.pretrained.card import training_hparams_text
    from sb_sphereface2.pretrained.folder import inference_hparams_yaml, write_model_folder

    stage = str(Path(__file__).resolve().parents[1] / "hparams" / "train.yaml")
    base = tmp_path_factory.mktemp("tiny_model")
    speakers = librispeech_voxceleb_tree.train_speakers[:TINY_MODEL_SPEAKERS]
    encoder_path = base / "label_encoder.txt"
    label_encoder(sorted(speakers), str(encoder_path))
    overrides = {"data_folder": str(librispeech_voxceleb_tree.root), **TINY_MODEL}
    torch.manual_seed(0)
    hparams = load_recipe_hparams(stage, overrides, num_classes=len(speakers))
    states = {name: hparams[name].state_dict() for name in ("embedding_model", "classifier", "compute_cost")}
    folder = base / "model"
    write_model_folder(
        str(folder), inference_hparams_yaml(stage, overrides, num_classes=len(speakers)), states, str(encoder_path),
        extra_files={"train_hparams.yaml": training_hparams_text(stage, overrides, [1], len(speakers))},
    )
    return folder


@pytest.fixture(scope="session")
def tiny_model_folders(tiny_model_folder, librispeech_voxceleb_tree, tmp_path_factory):
    """``{model block: model folder}`` with seeded random weights (see module docstring)."""
    import torch

    from sb_sphereface2.hparams import load_recipe_hparams
    from sb_sphereface2.pretrained.folder import inference_hparams_yaml, write_model_folder

    stage = str(Path(__file__).resolve().parents[1] / "hparams" / "train.yaml")
    base = tmp_path_factory.mktemp("tiny_blocks")
    folders = {"resnet34": tiny_model_folder}
    for model, sizes in TINY_BLOCK_SIZES.items():
        overrides = {"data_folder": str(librispeech_voxceleb_tree.root), "model": model, "n_mels": 24, "emb_dim": 32,
                     "speed_perturb": False, **sizes}
        torch.manual_seed(0)
        hparams = load_recipe_hparams(stage, overrides, num_classes=TINY_MODEL_SPEAKERS)
        states = {name: hparams[name].state_dict() for name in ("embedding_model", "classifier")}
        folders[model] = Path(write_model_folder(
            str(base / model), inference_hparams_yaml(stage, overrides, num_classes=TINY_MODEL_SPEAKERS), states,
            str(tiny_model_folder / "label_encoder.txt")))
    return folders


@pytest.fixture(scope="session")
def espeak_corpus(tmp_path_factory):
    """Tiny espeak-ng corpus: 8 speakers x 2 sessions x 2 utterances, trials over 3."""
    from tools.synthetic_corpus import make_espeak_corpus

    return make_espeak_corpus(
        tmp_path_factory.mktemp("espeak") / "corpus",
        num_speakers=8,
        sessions_per_speaker=2,
        utts_per_session=2,
        trial_speakers=3,
        seed=7,
    )
