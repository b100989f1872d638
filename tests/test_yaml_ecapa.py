"""The plugin composes in hyperpyyaml and trains a tiny ECAPA-TDNN one step."""

import torch
from hyperpyyaml import load_hyperpyyaml

YAML = """
n_mels: 24
emb_dim: 16
n_classes: 6
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [16, 16, 16, 16, 48]
    attention_channels: 8
    lin_neurons: !ref <emb_dim>
classifier: !new:sb_sphereface2.SphereFace2Head
    input_size: !ref <emb_dim>
    out_neurons: !ref <n_classes>
margin_scheduler: !new:sb_sphereface2.MarginScheduler
    final_margin: 0.2
    start_epoch: 1
    fix_epoch: 2
compute_cost: !new:sb_sphereface2.SphereFace2Loss
    num_classes: !ref <n_classes>
    settings: !new:sb_sphereface2.SphereFace2Settings
        margin_type: C
    margin_scheduler: !ref <margin_scheduler>
modules:
    embedding_model: !ref <embedding_model>
    classifier: !ref <classifier>
    compute_cost: !ref <compute_cost>
"""


def test_yaml_builds_and_trains_one_step():
    torch.manual_seed(0)
    hp = load_hyperpyyaml(YAML)
    modules = torch.nn.ModuleDict(hp["modules"])
    # The loss's bias is a parameter of `modules`, so the optimiser sees it.
    params = list(modules.parameters())
    assert any(p is hp["compute_cost"].bias for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-2)

    wavs = torch.randn(4, 16000) * 0.1
    lens = torch.ones(4)
    labels = torch.tensor([[0], [1], [2], [3]])
    hp["margin_scheduler"].step(hp["compute_cost"], iteration=1, iterations_per_epoch=2)  # mid-ramp
    assert hp["compute_cost"].margin == 0.2 * (1 - 10 ** -1.5)

    feats = hp["compute_features"](wavs)
    emb = hp["embedding_model"](feats, lens)
    loss = hp["compute_cost"](hp["classifier"](emb), labels, lens)
    before = {n: p.detach().clone() for n, p in modules.named_parameters()}
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in modules.named_parameters() if not torch.equal(p, before[n])]
    assert "compute_cost.bias" in changed
    assert "classifier.weight" in changed
    assert any(n.startswith("embedding_model.") for n in changed)
