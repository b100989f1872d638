"""Export to SpeechBrain's pretrained-folder format, loading it offline (strictly), and
fine-tuning from it.

Tests marked slow share one tiny ResNet trained once per module (real speech cut from
librispeech-mini, 30 speakers, 20 epochs) with the recipe's own command (train.yaml with
Adam); the scoring stage (recipe modules,
:class:`sb_sphereface2.pretrained.pipeline.EmbeddingPipeline` one utterance at a time,
:func:`sb_sphereface2.scoring.trial_scores.score_trials`) is run here and compared with what SpeechBrain's ``SpeakerRecognition`` and
``EncoderClassifier`` compute from the exported folder in a separate process with the hub
offline. The others use a model folder of random weights (``tiny_model_folder`` of conftest).
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from sb_sphereface2.pretrained.pipeline import EmbeddingPipeline
from sb_sphereface2.data.utterance_sources import csv_utterances
from sb_sphereface2.pretrained.pipeline import torch_embedder
from sb_sphereface2.scoring.extract import extract
from sb_sphereface2.pretrained.card import training_config
from sb_sphereface2.pretrained.checkpoint import CheckpointError, load_strictly
from sb_sphereface2.pretrained.export import export_model, mean_embedding
from sb_sphereface2.pretrained.folder import (
    MEAN_FILE,
    check_model_folder,
    load_for_inference,
    load_model_folder,
)
from sb_sphereface2.pretrained.initialise import initialise_encoder_from, initialise_from_model_folder
from sb_sphereface2.scoring.embeddings_io import save_embeddings
from sb_sphereface2.hparams import load_recipe_hparams, peek_hparams
from sb_sphereface2.scoring.trial_scores import score_trial_list
from sb_sphereface2.scoring.metrics import evaluate
from sb_sphereface2.scoring.reports import write_results
from sb_sphereface2.losses.margins import closed_form_bias
from sb_sphereface2.data.trials import TrialList, read_trials

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "recipes" / "VoxCeleb" / "train.py"
EXPORT = REPO / "recipes" / "VoxCeleb" / "export.py"
TINY = ["--resnet_channels=[8,8,16,16]", "--resnet_blocks=[1,1,1,1]", "--n_mels=24", "--emb_dim=64"]
# Tiny runs learn faster with Adam than with the paper's SGD schedule (margin 0: a 2-minute
# model cannot hold one); everything else is hparams/train.yaml.
TINY_STAGE = """\
base: {train_yaml}
tiny_lr: 0.005
opt_class: !name:torch.optim.Adam
    lr: !ref <tiny_lr>
lr_scheduler: !new:sb_sphereface2.schedules.lr.WarmupExponentialLR
    initial_lr: !ref <tiny_lr>
    final_lr: !ref <tiny_lr> / 5
    warmup_epochs: 0
    total_epochs: !ref <number_of_epochs>
"""
SEGMENTS = ("s1/00001", "s1/00002", "s2/00003", "s2/00004")
COMMON = ["--augment=False", "--speed_perturb=False", "--num_workers=0", "--dev_speakers=0",
          "--batch_size=16", "--device=cpu", "--trial_lists=[]"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def _run(args, cwd):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _corpus(tree, speakers, folder):
    """A VoxCeleb-layout data folder holding only ``speakers`` (copied from the fixture)."""
    folder.mkdir(parents=True)
    for speaker in speakers:
        shutil.copytree(tree.root / speaker, folder / speaker)
    return folder


def _recipe_modules(stage, overrides, model_folder, num_classes):
    """The recipe's own modules (composed training hparams) with the averaged weights."""
    hparams = load_recipe_hparams(stage, overrides, num_classes=num_classes)
    state = torch.load(model_folder / "embedding_model.ckpt", map_location="cpu")
    hparams["embedding_model"].load_state_dict(state)
    for name in ("compute_features", "mean_var_norm", "embedding_model"):
        hparams[name].eval()
    return hparams


def _pipeline(hparams):
    return EmbeddingPipeline(hparams["compute_features"], hparams["mean_var_norm"], hparams["embedding_model"])


def _embed_files(hparams, paths):
    rows = []
    pipeline = _pipeline(hparams)
    for path in paths:
        audio, rate = soundfile.read(path, dtype="float32")
        assert rate == 16000
        with torch.no_grad():
            rows.append(pipeline(torch.from_numpy(audio)[None], torch.ones(1))[0].numpy())
    return np.stack(rows).astype(np.float64)


@pytest.fixture(scope="module")
def trained(librispeech_voxceleb_tree, tmp_path_factory):
    """Train, run the scoring stage, export (with the training mean and the results)."""
    tree = librispeech_voxceleb_tree
    base = tmp_path_factory.mktemp("export")
    data = _corpus(tree, tree.train_speakers[:30], base / "train_corpus")
    out = base / "run"
    stage = base / "tiny_stage.yaml"
    stage.write_text(TINY_STAGE.format(train_yaml=REPO / "hparams" / "train.yaml"))
    overrides = ["--number_of_epochs=20", "--margin=0.0", "--margin_start_epoch=0", "--margin_fix_epoch=0",
                 "--average_last=2"]
    _run([TRAIN, stage, f"--data_folder={data}", f"--output_folder={out}", *COMMON, *TINY, *overrides], cwd=REPO)
    model_folder = out / "model"
    override_map = {"data_folder": str(data), "resnet_channels": [8, 8, 16, 16], "resnet_blocks": [1, 1, 1, 1],
                    "n_mels": 24, "emb_dim": 64}
    recipe = _recipe_modules(str(stage), override_map, model_folder, num_classes=30)

    # The scoring stage: training mean, trial embeddings, cosine scores, results.json.
    extraction = extract(csv_utterances(str(out / "data" / "train.csv")), torch_embedder(_pipeline(recipe)),
                         exact=True, progress=False)
    train_ids, train_emb = extraction.ids, extraction.embeddings
    mean = train_emb.astype(np.float64).mean(axis=0)
    save_embeddings(base / "train_emb.npz", train_ids, train_emb)
    trials = read_trials(tree.trial_lists[0])
    utts = sorted(set(trials.enrol) | set(trials.test))
    trial_emb = _embed_files(recipe, [tree.root / f"{u}.flac" for u in utts])
    scores = score_trial_list(utts, trial_emb, trials, mean=mean).scores
    results = {trials.name: evaluate(scores, trials.labels)}
    write_results(base / "scores", results, {"normalisation": "none", "mean_subtraction": True})

    exported = base / "exported"
    _run([EXPORT, model_folder, exported, "--results", base / "scores" / "results.json",
          "--train-embeddings", base / "train_emb.npz", "--name", "tiny-sphereface2"], cwd=REPO)
    return {
        "tree": tree, "base": base, "data": data, "out": out, "model_folder": model_folder,
        "recipe": recipe, "override_map": override_map, "mean": mean, "train_emb": train_emb, "results": results, "exported": exported,
    }


LOAD_SCRIPT = r"""
import json, sys
import numpy as np, torch
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.inference.speaker import SpeakerRecognition
folder, files, pairs, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
train_files = json.loads(sys.argv[5])
result = {}
for cls, some in ((SpeakerRecognition, files), (EncoderClassifier, files[:8])):
    model = cls.from_hparams(source=folder)
    with torch.no_grad():
        raw = [model.encode_batch(model.load_audio(f)[None]).reshape(-1).numpy() for f in some]
        norm = [model.encode_batch(model.load_audio(f)[None], normalize=True).reshape(-1).numpy() for f in some]
        label = model.classify_batch(model.load_audio(files[0])[None])[3][0]
    result[cls.__name__ + "_raw"] = np.stack(raw)  # EncoderClassifier: the first files only
    result[cls.__name__ + "_norm"] = np.stack(norm)
    result[cls.__name__ + "_label"] = np.array(label)
    if cls is SpeakerRecognition:
        result["verify"] = np.array([float(model.verify_files(a, b)[0]) for a, b in pairs])
    else:
        with torch.no_grad():
            result["train_labels"] = np.array([model.classify_batch(model.load_audio(f)[None])[3][0]
                                               for f in train_files])
np.savez(out, **result)
"""


@pytest.fixture(scope="module")
def loaded(trained):
    """What SpeechBrain's classes compute from the exported folder, hub offline, new process."""
    tree = trained["tree"]
    speakers = tree.trial_speakers
    combos = list(itertools.combinations(SEGMENTS, 2))
    # Same speaker: two segments of one recording; different: the same segment positions in
    # two speakers' recordings (each held-out speaker against the next one).
    same = [(tree.root / s / f"{x}.flac", tree.root / s / f"{y}.flac") for s in speakers for x, y in combos]
    different = [(tree.root / a / f"{x}.flac", tree.root / b / f"{y}.flac")
                 for a, b in zip(speakers, speakers[1:] + speakers[:1]) for x, y in combos]
    pairs = [(str(a), str(b)) for a, b in same + different]
    files = sorted({f for pair in pairs for f in pair})
    # Every segment of the 30 training speakers, for the head's labels.
    train_files = [str(tree.root / s / f"{x}.flac") for s in tree.train_speakers[:30] for x in SEGMENTS]
    out = trained["base"] / "loaded.npz"
    _run(["-c", LOAD_SCRIPT, trained["exported"], json.dumps(files), json.dumps(pairs), out, json.dumps(train_files)],
         cwd=trained["base"])
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files}
    reference = _embed_files(trained["recipe"], files)  # the scoring stage's embeddings
    return {"files": files, "pairs": pairs, "num_same": len(same), "reference": reference,
            "train_files": train_files, **arrays}


def _strict_hooks(pretrainer):
    return {name: getattr(hook, "func", hook) for name, hook in pretrainer.custom_hooks.items()}


@pytest.mark.slow
def test_exported_folder_layout_and_yaml(trained):
    folder = trained["exported"]
    names = set(os.listdir(folder))
    assert names == {"hyperparams.yaml", "embedding_model.ckpt", "classifier.ckpt", MEAN_FILE, "label_encoder.txt",
                     "label_encoder.ckpt", "README.md", "train_hparams.yaml", "compute_cost.ckpt"}
    assert not [n for n in os.listdir(folder.parent) if n.startswith(".")], "no temporaries left"
    assert check_model_folder(folder) == {"embedding_model": "embedding_model.ckpt", "mean_var_norm_emb": MEAN_FILE,
                                          "classifier": "classifier.ckpt", "label_encoder": "label_encoder.ckpt"}
    # Loadable from the hub unchanged: no path of this machine, the pretrainer names none.
    assert str(trained["base"]) not in (folder / "hyperparams.yaml").read_text()
    from hyperpyyaml import load_hyperpyyaml

    hparams = load_hyperpyyaml((folder / "hyperparams.yaml").read_text())
    pretrainer = hparams["pretrainer"]
    assert pretrainer.paths == {}
    assert sorted(pretrainer.loadables) == ["classifier", "embedding_model", "label_encoder", "mean_var_norm_emb"]
    assert _strict_hooks(pretrainer) == {name: load_strictly for name in pretrainer.loadables}
    assert sorted(hparams["modules"]) == ["classifier", "compute_features", "embedding_model", "mean_var_norm",
                                          "mean_var_norm_emb"]
    assert hparams["mean_var_norm_emb"].norm_type == "global" and not hparams["mean_var_norm_emb"].std_norm
    stats = torch.load(folder / MEAN_FILE)
    np.testing.assert_allclose(stats["glob_mean"].numpy(), trained["mean"], atol=1e-5)


@pytest.mark.slow
def test_recipe_model_folder_loads_strictly(trained):
    """The folder training writes names the strict hook too, and holds the averaged weights."""
    from hyperpyyaml import load_hyperpyyaml

    folder = trained["model_folder"]
    pretrainer = load_hyperpyyaml((folder / "hyperparams.yaml").read_text())["pretrainer"]
    assert _strict_hooks(pretrainer) == {name: load_strictly for name in ("embedding_model", "classifier",
                                                                           "label_encoder")}
    loaded = load_model_folder(folder)
    expected = torch.load(folder / "embedding_model.ckpt")
    for key, value in loaded["embedding_model"].state_dict().items():
        torch.testing.assert_close(value, expected[key], check_dtype=False)  # averaged counters are float
    assert loaded["label_encoder"].lab2ind == load_for_inference(folder).hparams.label_encoder.lab2ind
    assert len(loaded["label_encoder"]) == 30


@pytest.mark.slow
def test_model_card_has_training_config_and_results(trained):
    card = (trained["exported"] / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: speechbrain")
    assert "# tiny-sphereface2" in card
    assert "| loss block | sphereface2_c |" in card and "| epochs | 20 |" in card
    assert "| embedding dimension | 64 |" in card and "| training classes | 30 |" in card
    name, values = next(iter(trained["results"].items()))
    row = f"| {name} | {values['trials']} | {values['eer_percent']:.3f} | {values['min_dcf_0.01']:.4f} |"
    assert row in card
    assert str(trained["base"]) not in card  # no local paths on the hub
    config = training_config(trained["model_folder"])
    assert config["number_of_epochs"] == 20 and config["averaged_epochs"] == [19, 20]


@pytest.mark.slow
def test_embeddings_equal_recipe_scoring_stage(trained, loaded):
    expected = loaded["reference"]
    for cls in ("SpeakerRecognition", "EncoderClassifier"):
        count = len(loaded[f"{cls}_raw"])
        assert count >= 8
        np.testing.assert_allclose(loaded[f"{cls}_raw"], expected[:count], atol=1e-5, rtol=0)
        np.testing.assert_allclose(loaded[f"{cls}_norm"], expected[:count] - trained["mean"], atol=1e-5, rtol=0)
    # The head's label is one of the training speakers.
    assert str(loaded["EncoderClassifier_label"]) in trained["tree"].train_speakers[:30]


@pytest.mark.slow
def test_verify_files_scores_equal_recipe_scores(trained, loaded):
    ids = [str(Path(f).relative_to(trained["tree"].root).with_suffix("")) for f in loaded["files"]]
    rel = {f: i for f, i in zip(loaded["files"], ids)}
    pairs = loaded["pairs"]
    trials = TrialList("pairs", np.array([1] * loaded["num_same"] + [0] * (len(pairs) - loaded["num_same"]),
                                         dtype=np.int8),
                       [rel[a] for a, _ in pairs], [rel[b] for _, b in pairs])
    embeddings = loaded["reference"]
    # verify_files: cosine of raw embeddings = the recipe's scoring without mean subtraction.
    np.testing.assert_allclose(loaded["verify"], score_trial_list(ids, embeddings, trials).scores, atol=1e-5)
    # Cosine of encode_batch(normalize=True) = the recipe's default (mean-subtracted) scores.
    norm = loaded["SpeakerRecognition_norm"]
    index = {u: k for k, u in enumerate(ids)}
    a, b = norm[[index[e] for e in trials.enrol]], norm[[index[t] for t in trials.test]]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(cosine, score_trial_list(ids, embeddings, trials, mean=trained["mean"]).scores, atol=1e-5)


@pytest.mark.slow
def test_exported_head_names_the_training_speakers(trained, loaded):
    """EncoderClassifier.classify_batch of the export (embedding model, head and label
    encoder together) names the speaker of the training segments: measured 0.84 of 120;
    a head that is not the trained one is right about 1 time in 30."""
    truth = [Path(f).relative_to(trained["tree"].root).parts[0] for f in loaded["train_files"]]
    accuracy = np.mean([str(label) == speaker for label, speaker in zip(loaded["train_labels"], truth)])
    assert accuracy > 0.6, accuracy


@pytest.mark.slow
def test_verify_files_ranks_held_out_pairs_better_than_the_untrained_model(trained, loaded):
    """20 held-out speakers never seen in training: 120 pairs of two segments of one recording
    (same speaker) against 120 pairs of two speakers, scored by the export's verify_files and
    by the same architecture at initialisation (random filters already rank these pairs far
    above chance). Measured AUC: 0.895 exported against 0.754 untrained."""
    def auc(scores):
        same, different = scores[: loaded["num_same"]], scores[loaded["num_same"]:]
        return (same[:, None] > different[None, :]).mean()

    untrained = load_recipe_hparams(str(trained["base"] / "tiny_stage.yaml"), trained["override_map"], num_classes=30)
    for name in ("compute_features", "mean_var_norm", "embedding_model"):
        untrained[name].eval()
    embeddings = _embed_files(untrained, loaded["files"])
    index = {f: k for k, f in enumerate(loaded["files"])}
    a = embeddings[[index[x] for x, _ in loaded["pairs"]]]
    b = embeddings[[index[y] for _, y in loaded["pairs"]]]
    baseline = auc((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    assert auc(loaded["verify"]) > baseline + 0.07, (auc(loaded["verify"]), baseline)


@pytest.mark.slow
def test_mean_from_training_csv_equals_scoring_stage_mean(trained):
    mean = mean_embedding(trained["model_folder"], train_csv=trained["out"] / "data" / "train.csv",
                          max_utterances=12, progress=False)
    np.testing.assert_allclose(mean, trained["train_emb"][:12].astype(np.float64).mean(axis=0), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        mean_embedding(trained["model_folder"])


@pytest.mark.slow
def test_finetune_from_exported_folder_on_new_speakers(trained):
    """The exported folder stands in for a downloaded hub model: new speakers, new head with
    the closed-form bias, the pretrained encoder loaded, then exported again."""
    tree = trained["tree"]
    new_speakers = tree.train_speakers[30:40]
    data = _corpus(tree, new_speakers, trained["base"] / "new_corpus")
    out = trained["base"] / "finetuned"
    # A vanishing learning rate: what comes out is what was loaded (parameters), so the test
    # sees that the encoder came from the exported folder and the bias from the closed form.
    _run([TRAIN, "hparams/finetune_pretrained.yaml", f"--data_folder={data}", f"--output_folder={out}",
          f"--init_encoder_from={trained['exported']}", "--model=resnet34", *COMMON, *TINY,
          "--number_of_epochs=1", "--warmup_epochs=0", "--lr=1e-9", "--final_lr=1e-10", "--average_last=1",
          "--crop_seconds=2.0"], cwd=REPO)
    model_folder = out / "model"
    labels = (model_folder / "label_encoder.txt").read_text()
    assert all(f"'{s}'" in labels for s in new_speakers)
    assert not any(f"'{s}'" in labels for s in tree.train_speakers[:30])
    source = torch.load(trained["exported"] / "embedding_model.ckpt")
    tuned = torch.load(model_folder / "embedding_model.ckpt")
    params = dict(torch.nn.Module.named_parameters(_resnet_from(source)))
    for name in params:
        torch.testing.assert_close(tuned[name], source[name], atol=1e-6, rtol=0)
    head = torch.load(model_folder / "classifier.ckpt")
    assert head["weight"].shape[0] == len(new_speakers)
    bias = torch.load(model_folder / "compute_cost.ckpt")["bias"]
    # The closed form at the starting margin: finetune_pretrained.yaml ramps 0 -> 0.2 from epoch 1.
    expected = closed_form_bias(len(new_speakers), 0.0)
    assert abs(float(bias) - float(expected)) < 1e-3
    exported = trained["base"] / "finetuned_exported"
    result = _run([EXPORT, model_folder, exported, "--verify-files",
                   tree.root / new_speakers[0] / "s1" / "00001.flac",
                   tree.root / new_speakers[0] / "s2" / "00004.flac"], cwd=REPO)
    assert "verify_files" in result.stdout and "score" in result.stdout
    assert set(check_model_folder(exported)) == {"embedding_model", "classifier", "label_encoder"}


def _resnet_from(state):
    from sb_sphereface2.models.resnet import ResNet

    model = ResNet(input_size=24, channels=(8, 8, 16, 16), num_blocks=(1, 1, 1, 1), lin_neurons=64)
    model.load_state_dict(state)
    return model


# --- without training: a model folder of random weights (conftest's tiny_model_folder) -------

FIXTURE_SIZES = {"data_folder": "/data", "n_mels": 24, "emb_dim": 32, "resnet_channels": [4, 4, 8, 8],
                 "resnet_blocks": [1, 1, 1, 1]}


def _copy_folder(source, tmp_path):
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def test_stage_two_starts_from_stage_one_weights(tiny_model_folder):
    """train.py's stage 2 (initialise_from_model_folder): the recipe's own modules get
    exactly the folder's embedding model, head and SphereFace2 bias."""
    hparams = load_recipe_hparams("hparams/finetune.yaml", {**FIXTURE_SIZES, "pretrained_model": "x"},
                                  num_classes=12)
    loaded = initialise_from_model_folder(hparams, str(tiny_model_folder))
    assert sorted(loaded) == ["classifier", "compute_cost", "embedding_model"]
    for name in loaded:
        saved = torch.load(tiny_model_folder / f"{name}.ckpt")
        state = hparams[name].state_dict()
        assert sorted(state) == sorted(saved)
        for key, value in saved.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    wider = load_recipe_hparams("hparams/finetune.yaml", {**FIXTURE_SIZES, "pretrained_model": "x"}, num_classes=13)
    with pytest.raises(CheckpointError, match=r"model/classifier.ckpt does not fit the SphereFace2Head"
                                              r".*weight: copying a param with shape \[12, 32\]"):
        initialise_from_model_folder(wider, str(tiny_model_folder))


@pytest.mark.parametrize("damage", ["classifier_as_embedding", "truncated", "empty", "label_encoder_empty"])
def test_damaged_folder_is_one_error_naming_the_file(damage, tiny_model_folder, tmp_path):
    folder = _copy_folder(tiny_model_folder, tmp_path)
    target = folder / ("label_encoder.ckpt" if damage == "label_encoder_empty" else "embedding_model.ckpt")
    expected = {
        "classifier_as_embedding": r"does not fit the ResNet it is loaded into: missing 62 keys \(conv1.weight, "
                                   r"bn1.weight, bn1.bias, \.\.\.\); unexpected 1 key \(weight\)$",
        "truncated": r"is not a readable checkpoint \(truncated or damaged\?\)",
        "empty": r"is empty \(0 bytes\)",
        "label_encoder_empty": r"is empty \(0 bytes\)",
    }[damage]
    if damage == "classifier_as_embedding":
        shutil.copyfile(folder / "classifier.ckpt", target)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(b"")
    for load in (load_model_folder, load_for_inference):
        with pytest.raises(ValueError) as caught:
            load(folder)
        message = str(caught.value)
        assert "\n" not in message and message.startswith(str(target)), message
        assert __import__("re").search(expected, message), message


def test_failed_export_leaves_the_earlier_export(tiny_model_folder, tmp_path):
    out = tmp_path / "exported"
    export_model(tiny_model_folder, out, name="first")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(RuntimeError, match="export check failed: SpeakerRecognition.encode_batch differs"):
        export_model(tiny_model_folder, out, name="second", atol=-1.0)  # every check fails
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert os.listdir(tmp_path) == ["exported"], "no temporaries left"


def test_initialise_encoder_from_rejects_another_architecture(tiny_model_folder, tmp_path):
    from sb_sphereface2.models.resnet import ResNet

    other = ResNet(input_size=24, channels=(4, 4, 4, 4), num_blocks=(1, 1, 1, 1), lin_neurons=32)
    with pytest.raises(CheckpointError, match=r"embedding_model.ckpt does not fit the ResNet it is loaded into: "
                                              r"size mismatch for .*; choose the matching --model"):
        initialise_encoder_from(other, export_model(tiny_model_folder, tmp_path / "exported"))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        initialise_encoder_from(other, "/nonexistent/model")


HUB_STYLE_YAML = """\
# The layout of speechbrain/spkrec-ecapa-voxceleb (sizes shrunk for the test).
n_mels: 80
pretrained_path: {folder}
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [16, 16, 16, 16, 48]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 8
    lin_neurons: 12
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def test_finetune_pretrained_yaml_targets_spkrec_ecapa_voxceleb():
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    from sb_sphereface2.models.resnet import ResNet

    settings = peek_hparams("hparams/finetune_pretrained.yaml", {"data_folder": "/data"})
    assert settings["init_encoder_from"] == "speechbrain/spkrec-ecapa-voxceleb"
    assert (settings["model"], settings["ecapa_channels"], settings["emb_dim"], settings["n_mels"]) == (
        "ecapa_tdnn", 1024, 192, 80)
    hparams = load_recipe_hparams("hparams/finetune_pretrained.yaml", {"data_folder": "/data", "ecapa_channels": 16},
                                  num_classes=3)
    assert isinstance(hparams["embedding_model"], ECAPA_TDNN)
    # --model on the command line still wins over the stage's own block choice.
    hparams = load_recipe_hparams("hparams/finetune_pretrained.yaml", {"data_folder": "/data", "model": "resnet34",
                                  "resnet_channels": [2, 2, 2, 2], "resnet_blocks": [1, 1, 1, 1]}, num_classes=3)
    assert isinstance(hparams["embedding_model"], ResNet)


def test_initialise_encoder_from_a_hub_layout_folder(tmp_path):
    """A folder shaped like speechbrain/spkrec-ecapa-voxceleb (paths in the pretrainer,
    label_encoder.txt, mean_var_norm_emb.ckpt, no head): checked, loaded strictly whole,
    and its encoder loaded strictly into the ECAPA-TDNN that
    hparams/finetune_pretrained.yaml builds."""
    from hyperpyyaml import load_hyperpyyaml

    folder = tmp_path / "spkrec-ecapa-like"
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text(HUB_STYLE_YAML.format(folder=folder))
    hub = load_hyperpyyaml((folder / "hyperparams.yaml").read_text())
    torch.manual_seed(0)
    for p in hub["embedding_model"].parameters():
        torch.nn.init.normal_(p)
    torch.save(hub["embedding_model"].state_dict(), folder / "embedding_model.ckpt")
    (folder / "label_encoder.txt").write_text("'id10001' => 0\n================\n'starting_index' => 0\n")
    with pytest.raises(FileNotFoundError, match="missing mean_var_norm_emb.ckpt"):
        check_model_folder(folder)
    mean = torch.arange(12.0)
    torch.save({"count": 1, "glob_mean": mean, "glob_std": torch.ones(12)}, folder / "mean_var_norm_emb.ckpt")
    assert check_model_folder(folder) == {"embedding_model": "embedding_model.ckpt",
                                          "mean_var_norm_emb": "mean_var_norm_emb.ckpt",
                                          "label_encoder": "label_encoder.txt"}
    whole = load_model_folder(folder)
    torch.testing.assert_close(whole["mean_var_norm_emb"].glob_mean, mean)
    assert whole["label_encoder"].lab2ind == {"id10001": 0}

    recipe = load_recipe_hparams("hparams/finetune_pretrained.yaml", {
        "data_folder": "/data", "ecapa_channels": 16, "emb_dim": 12}, num_classes=3)
    with pytest.raises(CheckpointError, match="does not fit"):
        initialise_encoder_from(recipe["embedding_model"], str(folder))  # attention_channels 128 vs 8
    recipe["embedding_model"] = hub["embedding_model"].__class__(
        input_size=80, channels=[16, 16, 16, 16, 48], kernel_sizes=[5, 3, 3, 3, 1],
        dilations=[1, 2, 3, 4, 1], attention_channels=8, lin_neurons=12)
    assert initialise_encoder_from(recipe["embedding_model"], str(folder)).endswith("embedding_model.ckpt")
    for name, value in hub["embedding_model"].state_dict().items():
        torch.testing.assert_close(recipe["embedding_model"].state_dict()[name], value)
