#!/usr/bin/env python3
"""Export a trained model folder as a SpeechBrain pretrained model (ready for the model hub).

    python recipes/VoxCeleb/export.py results/resnet34_sphereface2_c/1986/model exported/ \\
        --results results/resnet34_sphereface2_c/1986/scores/results.json \\
        --train-csv results/resnet34_sphereface2_c/1986/data/train.csv \\
        --verify-files enrol.wav test.wav

Writes ``hyperparams.yaml``, the checkpoints it lists, ``label_encoder.txt``, the training
mean embedding (``mean_var_norm_emb.ckpt``, with ``--train-embeddings`` or ``--train-csv``)
and a model card ``README.md`` (training configuration, the results table of
``--results``), checks that ``SpeakerRecognition`` and ``EncoderClassifier`` load it and
reproduce the model's embeddings, then (``--verify-files``) scores two files with it.
A wrong, truncated or empty checkpoint in the model folder stops it with one line naming
the file; an earlier export at the destination is left as it was. See
sb_sphereface2/pretrained/export.py and docs/pretrained_models.md.
"""

import argparse
import sys
from sb_sphereface2.errors import fail


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_folder", help="the recipe's model folder (<output_folder>/model)")
    parser.add_argument("out_folder", help="the exported folder (replaced if it exists)")
    parser.add_argument("--results", help="results.json of the scoring stage, tabulated in README.md")
    mean = parser.add_mutually_exclusive_group()
    mean.add_argument("--train-embeddings", help="training embeddings .npz: its mean is subtracted by "
                      "encode_batch(normalize=True)")
    mean.add_argument("--train-csv", help="or a training CSV (<output_folder>/data/train.csv) to embed for that mean")
    parser.add_argument("--name", help="model name in the card (default: the folder's name)")
    parser.add_argument("--no-verify", action="store_true", help="skip loading the export back")
    parser.add_argument("--verify-files", nargs=2, metavar=("ENROL", "TEST"),
                        help="score two audio files with the exported folder (SpeakerRecognition.verify_files)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from sb_sphereface2.pretrained.export import export_model
    from sb_sphereface2.pretrained.folder import load_for_inference

    out = export_model(
        args.model_folder, args.out_folder, results_json=args.results,
        train_embeddings=args.train_embeddings, train_csv=args.train_csv,
        name=args.name, verify=not args.no_verify,
    )
    print(f"exported {args.model_folder} -> {out}")
    if args.verify_files:
        model = load_for_inference(out)
        score, decision = model.verify_files(*args.verify_files)
        print(f"verify_files {args.verify_files[0]} {args.verify_files[1]}: "
              f"score {float(score):.4f}, same speaker (threshold 0.25): {bool(decision)}")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        sys.exit(fail(error, 1))
