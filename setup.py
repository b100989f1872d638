import re

from setuptools import find_packages, setup

# The one version number: sb_sphereface2/__init__.py.
VERSION = re.search(r'^__version__ = "([^"]+)"', open("sb_sphereface2/__init__.py", encoding="utf-8").read(), re.M).group(1)

setup(
    name="sb_sphereface2",
    version=VERSION,
    description="SphereFace2 binary-classification loss for SpeechBrain speaker verification",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sb_sphereface2", "sb_sphereface2.*"]),
    python_requires=">=3.9",
    # The core (losses, heads, models, schedules): torch, torchaudio, speechbrain, hyperpyyaml.
    install_requires=[
        "speechbrain==1.1.2",
        "torch>=2.7.1,<=2.14.1",
        "torchaudio>=2.7.1,<=2.11.0",
        "hyperpyyaml>=1.2.2",
    ],
    # The recipe harness (data preparation, training, scoring, model folders, labels).
    extras_require={
        "recipes": [
            "torchvision<=0.29.1",
            "numpy>=1.24",
            "scipy>=1.10",
            "scikit-learn>=1.2",
            "filelock>=3.0",
            "sentencepiece",
            "soundfile>=0.12",
            "matplotlib>=3.7",
            "tensorboard>=2.14",
            "tqdm",
        ],
        "onnx": ["onnx==1.23.2", "onnxscript==0.7.2", "onnxruntime==1.31.1"],
    },
    license="Apache-2.0",
)
