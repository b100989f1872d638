"""Every hparams file loads and instantiates, for every model x loss block combination."""

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
    assert hp["model"] == "resnet34" and hp["loss"] == "sphereface2_c" and hp["features"] == "kaldi_fbank"
    assert sum(p.numel() for p in hp["embedding_model"].parameters()) == 6634336
    assert (hp["number_of_epochs"], hp["batch_size"], hp["crop_seconds"], hp["n_mels"]) == (150, 256, 2.015, 80)
    assert type(hp["compute_features"]).__name__ == "KaldiFbank" and hp["compute_features"].window_type == "hamming"
    loss = hp["compute_cost"]
    # The loss is built at the margin its schedule gives at iteration 0 (0): its closed-form
    # bias is computed there (15.05 for 17,982 classes), the scheduler ramps the margin to 0.2.
    settings = loss.settings
    assert (settings.scale, loss.margin, settings.lambda_, settings.t, settings.margin_type) == (32.0, 0.0, 0.7, 3.0, "C")
    assert loss.bias.item() == pytest.approx(15.05, abs=0.01)
    ramp = hp["margin_scheduler"]
    assert (ramp.final_margin, ramp.start_epoch, ramp.fix_epoch, ramp.ramp) == (0.2, 20, 40, "exp")
    lr = hp["lr_scheduler"]
    assert (lr.initial_lr, lr.final_lr, lr.warmup_epochs, lr.scale_ratio, lr.warm_from_zero) == (0.1, 5e-5, 6, 4.0, False)
    assert hp["speed_perturb"] is True and hp["augment_prob"] == 0.6 and hp["average_last"] == 10

    lmf = load_recipe_hparams(str(HPARAMS / "finetune.yaml"),
                              {"data_folder": "/x", "pretrained_model": "/m", "loss": "sphereface2_a",
                               "output_folder": str(tmp_path)},
                              num_classes=17982)
    assert lmf["compute_cost"].margin == 0.25 and lmf["margin_scheduler"](0, 10) == 0.25
    assert (lmf["crop_seconds"], lmf["number_of_epochs"], lmf["speed_perturb"], lmf["batch_size"]) == (6.015, 5, False, 128)
    assert lmf["lr_scheduler"](10, 10) == pytest.approx(2 * 1e-4 * 0.25 ** 0.2)


def test_ecapa_block_bias_is_the_one_its_yaml_promises(tmp_path):
    """ECAPA's margin is fixed from the first epoch: the loss starts at the final margin and
    takes the closed-form bias there, the same when the composed yaml is loaded anywhere."""
    from sb_sphereface2 import closed_form_bias

    for loss_block, final in (("sphereface2_c", 0.2), ("sphereface2_a", 0.15)):
        hp = load_recipe_hparams(str(HPARAMS / "train.yaml"),
                                 {"model": "ecapa_tdnn", "loss": loss_block, "ecapa_channels": 16,
                                  "data_folder": "/x", "output_folder": str(tmp_path)}, num_classes=5994)
        loss = hp["compute_cost"]
        assert hp["margin_scheduler"](0, 100) == final and loss.margin == final
        assert loss.bias.item() == pytest.approx(closed_form_bias(5994, final, loss.settings), rel=1e-6)


def test_sharded_head_takes_its_loss_from_the_loss_block(tmp_path):
    from sb_sphereface2.losses.sharded import ShardedSphereFace2Loss

    hp = load_recipe_hparams(str(HPARAMS / "train_sharded.yaml"),
                             {"loss": "sphereface2_a", "data_folder": "/x", "output_folder": str(tmp_path)},
                             num_classes=100)
    loss = hp["compute_cost"]
    assert isinstance(loss, ShardedSphereFace2Loss)
    assert loss.settings == hp["loss_settings"] and loss.settings.margin_type == "A"
    assert hp["margin_scheduler"].final_margin == 0.15
    with pytest.raises(ValueError, match="loss_settings"):
        load_recipe_hparams(str(HPARAMS / "train_sharded.yaml"),
                            {"loss": "aam", "data_folder": "/x", "output_folder": str(tmp_path)}, num_classes=100)


def test_one_override_switches_a_block():
    """--model=... / --loss=... as SpeechBrain passes them (a yaml string)."""
    text = compose_hparams_yaml(str(HPARAMS / "train.yaml"), "model: ecapa_tdnn\nloss: aam\n")
    assert "ECAPA_TDNN" in text and "AAMLoss" in text and "sb_sphereface2.models.resnet.ResNet" not in text


def test_unknown_block_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'arcface'.*known: aam"):
        compose_hparams_yaml(str(HPARAMS / "train.yaml"), {"loss": "arcface"})


REQUIRED = {"data_folder": "/data", "pretrained_model": "/m", "model_folder": "/m", "data_prep_folder": "/d"}


@pytest.mark.parametrize("stage", sorted(p.name for p in HPARAMS.glob("*.yaml")))
def test_composed_stage_loads_with_plain_hyperpyyaml(stage, tmp_path):
    """`python -m sb_sphereface2.hparams <stage>` prints a self-contained yaml: plain
    hyperpyyaml loads it with no overrides at all (required paths default to null)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "sb_sphereface2.hparams", str(HPARAMS / stage),
                             f"--output_folder={tmp_path / 'out'}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    hp = load_hyperpyyaml(result.stdout)
    if stage != "verification.yaml":
        assert isinstance(hp["classifier"], torch.nn.Module) and hp["output_folder"] == str(tmp_path / "out")
        assert hp["num_classes"] == 17982 and hp["data_folder"] is None
    else:
        assert hp["model_folder"] is None and hp["top_n"] == 300


def test_composition_writes_overrides_in_and_names_unknown_keys():
    text = compose_hparams_yaml(str(HPARAMS / "train.yaml"), {"batch_size": 64, "dataloader_options": {"num_workers": 1}})
    hp = load_hyperpyyaml(text, {"output_folder": "/tmp/unused", "data_folder": "/x"})
    assert hp["batch_size"] == 64 and hp["dataloader_options"] == {"batch_size": 64, "shuffle": True,
                                                                   "drop_last": True, "num_workers": 1}
    from sb_sphereface2.hparams import UnknownKeyError

    with pytest.raises(UnknownKeyError, match="unknown hyperparameter 'lmf_margn'; did you mean lmf_margin"):
        compose_hparams_yaml(str(HPARAMS / "train.yaml"), {"lmf_margn": 0.3})
    with pytest.raises(UnknownKeyError, match="unknown hyperparameter 'dataloader_options.workers'"):
        compose_hparams_yaml(str(HPARAMS / "train.yaml"), {"dataloader_options": {"workers": 1}})


@pytest.mark.parametrize("stage", sorted(p.name for p in HPARAMS.glob("*.yaml") if p.name != "verification.yaml"))
def test_every_stage_file_loads(stage, tmp_path):
    """Each top-level stage file instantiates as it is (one process), small widths only."""
    from sb_sphereface2.hparams import peek_hparams

    overrides = {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out")}
    if "pretrained_model" in peek_hparams(str(HPARAMS / stage), overrides):
        overrides["pretrained_model"] = str(tmp_path / "m")
    model = peek_hparams(str(HPARAMS / stage), overrides)["model"]
    hp = load_recipe_hparams(str(HPARAMS / stage), {**overrides, **SMALL[model]}, num_classes=9)
    emb = hp["embedding_model"].eval()(torch.randn(2, 120, hp["n_mels"]), torch.ones(2))
    assert hp["classifier"](emb).shape == (2, 1, 9)


def test_features_block_follows_the_model_and_one_line_switches_it(tmp_path):
    base = {"data_folder": "/x", "output_folder": str(tmp_path)}
    names = {m: type(load_recipe_hparams(str(HPARAMS / "train.yaml"), {**base, "model": m, **SMALL[m]},
                                         num_classes=3)["compute_features"]).__name__ for m in MODELS}
    assert names == {"ecapa_tdnn": "Fbank", "resnet34": "KaldiFbank", "speechbrain_resnet": "Fbank"}
    switched = load_recipe_hparams(str(HPARAMS / "train.yaml"), {**base, "features": "fbank"}, num_classes=3)
    assert type(switched["compute_features"]).__name__ == "Fbank"


def test_sharded_stage_exports_the_plain_head():
    from sb_sphereface2.pretrained.folder import inference_hparams_yaml

    text = inference_hparams_yaml(str(HPARAMS / "train_sharded.yaml"), {"data_folder": "x"}, num_classes=7)
    assert "classifier: !new:sb_sphereface2.SphereFace2Head" in text and "Sharded" not in text
