"""Fault injection, pretrained models: strict loading of damaged model folders by the export,
SpeechBrain's ``from_hparams`` and stage 2. Each fault is driven through the recipe command
lines (subprocess) on a tiny corpus and ends in a one-line error naming the file, folder or
key (exit code, no traceback), with earlier results and checkpoints intact, or in a correct
result. ``docs/reliability.md`` lists the faults and the tests that show what the project
does."""

# Every model folder this package writes names a strict loading hook in its pretrainer, so
# a wrong file (classifier.ckpt copied over embedding_model.ckpt), a truncated or an empty
# checkpoint stops the export, SpeechBrain's from_hparams and stage 2 with one line naming
# the file, instead of loading a random encoder with warnings.

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
_FIXTURE_SIZES = ["--n_mels=24", "--emb_dim=32", "--resnet_channels=[4,4,8,8]", "--resnet_blocks=[1,1,1,1]"]
_DAMAGES = ("classifier_as_embedding", "truncated", "empty")
_FROM_HPARAMS = (
    "import sys\n"
    "from speechbrain.inference.speaker import SpeakerRecognition\n"
    "try:\n"
    "    SpeakerRecognition.from_hparams(source=sys.argv[1], savedir=sys.argv[2])\n"
    "except Exception as error:\n"
    "    sys.exit(f'error: {error}')\n"
    "print('loaded')\n"
)


def _run_python(args, cwd=_REPO):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)


def _damage(folder, damage):
    """Damage ``folder/embedding_model.ckpt``; return its path."""
    target = folder / "embedding_model.ckpt"
    if damage == "classifier_as_embedding":
        shutil.copyfile(folder / "classifier.ckpt", target)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(b"")
    return target


def _assert_one_line_error(result, path, whole_stderr=True):
    """Exit code != 0, no traceback, no SpeechBrain warning per key, and one line
    ``error: ...`` naming the file (the whole of stderr when ``whole_stderr``)."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "did not have parameters" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr[-3000:]
    if whole_stderr:
        assert lines == errors, result.stderr[-3000:]
    return errors[0]


_EXPECTED = {
    "classifier_as_embedding": "does not fit the ResNet it is loaded into: missing 62 keys (conv1.weight, "
                               "bn1.weight, bn1.bias, ...); unexpected 1 key (weight)",
    "truncated": "is not a readable checkpoint (truncated or damaged?)",
    "empty": "is empty (0 bytes)",
}


@pytest.fixture(scope="module")
def exported_for_faults(tiny_model_folder, tmp_path_factory):
    """A folder exported by recipes/VoxCeleb/export.py from conftest's tiny model folder."""
    out = tmp_path_factory.mktemp("pretrained_faults") / "exported"
    result = _run_python(["recipes/VoxCeleb/export.py", tiny_model_folder, out, "--name", "fault-tests"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("damage", _DAMAGES)
def test_export_of_a_damaged_model_folder_keeps_the_earlier_export(damage, exported_for_faults, tiny_model_folder,
                                                                    tmp_path):
    source = tmp_path / "model"
    shutil.copytree(tiny_model_folder, source)
    path = _damage(source, damage)
    destination = tmp_path / "exported"
    shutil.copytree(exported_for_faults, destination)
    before = {name: (destination / name).read_bytes() for name in os.listdir(destination)}
    result = _run_python(["recipes/VoxCeleb/export.py", source, destination])
    assert _EXPECTED[damage] in _assert_one_line_error(result, path)
    assert {name: (destination / name).read_bytes() for name in os.listdir(destination)} == before
    assert sorted(os.listdir(tmp_path)) == ["exported", "model"], "no temporaries left"


@pytest.mark.slow
@pytest.mark.parametrize("damage", _DAMAGES)
def test_speechbrain_from_hparams_refuses_a_damaged_export(damage, exported_for_faults, tmp_path):
    folder = tmp_path / "exported"
    shutil.copytree(exported_for_faults, folder)
    path = _damage(folder, damage)
    result = _run_python(["-c", _FROM_HPARAMS, folder, tmp_path / "savedir"])
    assert _EXPECTED[damage] in _assert_one_line_error(result, path)


@pytest.mark.slow
def test_speechbrain_from_hparams_loads_the_intact_export(exported_for_faults, tmp_path):
    result = _run_python(["-c", _FROM_HPARAMS, exported_for_faults, tmp_path / "savedir"])
    assert result.returncode == 0 and result.stdout.strip().endswith("loaded"), result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("damage", _DAMAGES)
def test_stage_two_from_a_damaged_stage_one_folder(damage, librispeech_voxceleb_tree, tiny_model_folder, tmp_path):
    """train.py hparams/finetune.yaml --pretrained_model=<damaged folder>: one line, nothing trained."""
    tree = librispeech_voxceleb_tree
    speakers = [s for s in (tiny_model_folder / "label_encoder.txt").read_text().split("'")[1::2]
                if (tree.root / s).is_dir()]
    assert len(speakers) >= 8
    data = tmp_path / "data"
    for speaker in speakers:
        shutil.copytree(tree.root / speaker, data / speaker)
    folder = tmp_path / "stage1_model"
    shutil.copytree(tiny_model_folder, folder)
    path = _damage(folder, damage)
    out = tmp_path / "lmf"
    result = _run_python(["recipes/VoxCeleb/train.py", "hparams/finetune.yaml", f"--data_folder={data}",
                          f"--output_folder={out}", f"--pretrained_model={folder}", "--device=cpu",
                          "--num_workers=0", "--augment=False", "--dev_speakers=0", "--trial_lists=[]",
                          "--batch_size=4", "--number_of_epochs=1", *_FIXTURE_SIZES])
    message = _assert_one_line_error(result, path, whole_stderr=False)
    assert _EXPECTED[damage] in message
    assert not (out / "model").exists()
    assert not list((out / "save").glob("CKPT*")), "nothing trained"
