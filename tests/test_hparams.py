"""Every hparams file loads and instantiates, for every model x loss block combination."""

import os
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from sb_sphereface2 import MarginScheduler, SphereFace2Head, SphereFace2Loss
from sb_sphereface2.losses.aam import AAMLoss
from sb_sphereface2.hparams import compose_hparams_yaml, load_recipe_hparams

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = ROOT / "hparams"
MODELS = sorted(p.stem for p in (HPARAMS / "models").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (HPARAMS / "losses").glob("*.yaml"))
STAGES = {"train.yaml": {}, "finetune.yaml": {"pretrained_model": "/tmp/model"}}
# Small widths so that 24 combinations instantiate quickly; the real sizes are checked
# once per model block below.
SMALL = {
    "ecapa_tdnn": {"ecapa_channels": 16},
    "resnet34": {"resnet_channels": [4, 4, 8, 8], "resnet_blocks": [1, 1, 1, 1]},
    "speechbrain_resnet": {"sb_resnet_channels": [4, 4, 8, 8], "sb_resnet_blocks": [1, 1, 1, 1]},
}


def test_blocks_exist():
    assert MODELS == ["ecapa_tdnn", "resnet34", "speechbrain_resnet"]
    assert LOSSES == ["aam", "sphereface2_a", "sphereface2_c", "sphereface2_m"]


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("loss", LOSSES)
def test_stage_loads_with_every_block(stage, model, loss, tmp_path):
    overrides = {"model": model, "loss": loss, "data_folder": str(tmp_path),
                 "output_folder": str(tmp_path / "out"), **STAGES[stage], **SMALL[model]}
    hp = load_recipe_hparams(str(HPARAMS / stage), overrides, num_classes=11)
    assert isinstance(hp["classifier"], SphereFace2Head)
    assert isinstance(hp["margin_scheduler"], MarginScheduler)
    expected = AAMLoss if loss == "aam" else SphereFace2Loss
    assert isinstance(hp["compute_cost"], expected)
    assert hp["compute_cost"].num_classes == 11
    # the head and the embedding model agree on the embedding size
    feats = torch.randn(2, 150, hp["n_mels"])
    with torch.no_grad():
        hp["embedding_model"].eval()
        emb = hp["embedding_model"](feats, torch.ones(2))
        assert hp["classifier"](emb).shape == (2, 1, 11)


@pytest.mark.parametrize("model,params", [
    ("resnet34", 6634336), ("ecapa_tdnn", 20767552), ("speechbrain_resnet", 15438336)])
def test_model_blocks_at_full_size(model, params, tmp_path):
    hp = load_recipe_hparams(str(HPARAMS / "train.yaml"), {"model": model, "data_folder": "/x",
                             "output_folder": str(tmp_path)}, num_classes=5994)
    assert sum(p.numel() for p in hp["embedding_model"].parameters()) == params
    assert hp["classifier"].weight.shape == (5994, hp["emb_dim"])


def test_paper_defaults(tmp_path):
    hp = load_recipe_hparams(str(HPARAMS / "train.yaml"), {"data_folder": "/x", "output_folder": str(tmp_path)},
                             num_classes=17982)
    assert hp["model"] == "resnet34" and hp["loss"] == "sphereface2_c"
    assert sum(p.numel() for p in hp["embedding_model"].parameters()) == 6634336
    assert (hp["number_of_epochs"], hp["batch_size"], hp["crop_seconds"], hp["n_mels"]) == (150, 256, 2.0, 80)
    loss = hp["compute_cost"]
    assert (loss.scale, loss.margin, loss.lambda_, loss.t, loss.margin_type) == (32.0, 0.2, 0.7, 3.0, "C")
    assert loss.bias.item() == pytest.approx(8.65, abs=0.01)
    ramp = hp["margin_scheduler"]
    assert (ramp(20.0), ramp(40.0)) == (0.0, 0.2)
    lr = hp["lr_scheduler"]
    assert lr(6.0) == pytest.approx(0.1) and lr(150.0) == pytest.approx(5e-5)
    assert hp["speed_perturb"] is True

    lmf = load_recipe_hparams(str(HPARAMS / "finetune.yaml"),
                              {"data_folder": "/x", "pretrained_model": "/m", "loss": "sphereface2_a",
                               "output_folder": str(tmp_path)},
                              num_classes=17982)
    assert lmf["compute_cost"].margin == 0.25 and lmf["margin_scheduler"](0.0) == 0.25
    assert (lmf["crop_seconds"], lmf["number_of_epochs"], lmf["speed_perturb"]) == (6.0, 5, False)
    assert lmf["lr_scheduler"](0.0) == pytest.approx(1e-4) and lmf["lr_scheduler"](5.0) == pytest.approx(2.5e-5)


def test_one_override_switches_a_block():
    """--model=... / --loss=... as SpeechBrain passes them (a yaml string)."""
    text = compose_hparams_yaml(str(HPARAMS / "train.yaml"), "model: ecapa_tdnn\nloss: aam\n")
    assert "ECAPA_TDNN" in text and "AAMLoss" in text and "sb_sphereface2.models.resnet.ResNet" not in text


def test_unknown_block_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'arcface'.*known: aam"):
        compose_hparams_yaml(str(HPARAMS / "train.yaml"), {"loss": "arcface"})


def test_verification_yaml_loads(tmp_path):
    with open(HPARAMS / "verification.yaml") as handle:
        hp = load_hyperpyyaml(handle, {"model_folder": str(tmp_path / "m"), "data_prep_folder": str(tmp_path)})
    assert hp["top_n"] == 300


@pytest.mark.parametrize("stage", sorted(p.name for p in HPARAMS.glob("*.yaml") if p.name != "verification.yaml"))
def test_every_stage_file_loads(stage, tmp_path):
    """Each top-level stage file instantiates as it is (one process), small widths only."""
    from sb_sphereface2.hparams import peek_hparams

    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out")}
    if "pretrained_model: !PLACEHOLDER" in compose_hparams_yaml(str(HPARAMS / stage), overrides):
        overrides["pretrained_model"] = str(tmp_path / "m")
    model = peek_hparams(str(HPARAMS / stage), overrides)["model"]
    hp = load_recipe_hparams(str(HPARAMS / stage), {**overrides, **SMALL[model]}, num_classes=9)
    emb = hp["embedding_model"].eval()(torch.randn(2, 120, hp["n_mels"]), torch.ones(2))
    assert hp["classifier"](emb).shape == (2, 1, 9)


def test_sharded_stage_exports_the_plain_head():
    from sb_sphereface2.pretrained.folder import inference_hparams_yaml

    text = inference_hparams_yaml(str(HPARAMS / "train_sharded.yaml"), {"data_folder": "x"}, num_classes=7)
    assert "classifier: !new:sb_sphereface2.SphereFace2Head" in text and "Sharded" not in text
