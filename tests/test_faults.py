"""Fault injection: damaged inputs, typos, full or read-only folders and ``kill -9``, each
driven through the recipe command lines (subprocess) on a tiny corpus. Every case ends in
a one-line error naming the file, folder or key (exit code, no traceback), with earlier
results and checkpoints intact, or in a correct result. ``docs/reliability.md`` lists
the faults and the tests below that show what the project does."""

# --- training: hyperparameters, checkpoints, kill -9 -------------------------------------


# --- data preparation: damaged audio, bad folders -----------------------------------------


# --- pretrained models: strict loading, damaged checkpoints --------------------------------


# --- scoring: one scoring per folder, all-or-nothing output, trial checks -----------------
