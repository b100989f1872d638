"""Module paths of sb_sphereface2 0.1.0, before the package was split into subpackages.

Model folders exported by 0.1.0 name classes by their old paths in ``hyperparams.yaml``
(``!new:sb_sphereface2.resnet.ResNet``), and user recipes import them. An import of an
old path is answered with the module at its new path: the same module object, so
classes, functions and ``isinstance`` checks are shared.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# 0.1.0 module -> module today (both relative to ``sb_sphereface2``).
MOVED_MODULES = {
    "sphereface2": "losses.sphereface2",
    "lean": "losses.lean",
    "aam": "losses.aam",
    "sharded": "losses.sharded",
    "head": "models.head",
    "resnet": "models.resnet",
    "margin_scheduler": "training.margin_scheduler",
    "lr_schedule": "training.lr_schedule",
    "recipe_hparams": "hparams",
    "data_prep": "data.prepare",
    "dataio": "data.dataio",
    "augment_csv": "data.augmentation",
    "trials": "data.trials",
    "training_csv": "data.training_csv",
    "atomic_files": "files",
    "metrics": "scoring.metrics",
    "score_norm": "scoring.normalization",
    "calibration": "scoring.calibration",
    "plots": "scoring.plots",
    "embedding": "scoring.embed",
    "embeddings_io": "scoring.embeddings_io",
    "score": "scoring.cli",
    "model_folder": "pretrained.folder",
    "export": "pretrained.export",
    "label_noise": "labels.noise",
    "pseudo_labels": "labels.pseudo",
}
# "scoring" was a module (trial scoring) and is now a subpackage: its functions are
# re-exported by ``sb_sphereface2.scoring`` itself.


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``sb_sphereface2.<old>`` and loads it as the module at its new path."""

    def __init__(self, package):
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        prefix = self.package + "."
        if fullname.startswith(prefix) and fullname[len(prefix):] in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder, replaced in exec_module

    def exec_module(self, module):
        # The import system returns whatever sys.modules holds under the name after this
        # call: the module at its new path, with its own name and spec untouched.
        new = MOVED_MODULES[module.__name__[len(self.package) + 1:]]
        sys.modules[module.__name__] = importlib.import_module(f"{self.package}.{new}")


def install(package):
    """Answer imports of the 0.1.0 module paths of ``package`` (idempotent)."""
    if not any(isinstance(f, _Alias) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_Alias(package))
