"""Verification scoring: embeddings (``embed``, ``embeddings_io``), trial-list checks
(``trial_checks``), trial scores (``trial_scores``), metrics (``metrics``), score
normalisation (``normalization``), calibration and its quality measures (``calibration``,
``quality``), result files and plots (``reports``, ``plots``), the output-folder lock
(``output_folder``) and the command line (``python -m sb_sphereface2.scoring``, ``cli``)."""
