"""Reading and atomically writing SpeechBrain training CSVs (``ID,duration,wav,start,stop,spk_id``).

Rows are kept as ordered dicts of strings, so a tool that changes one column writes
every other column back exactly as it read it.
"""

import csv
import os

from sb_sphereface2.files import write_csv_atomic


def read_training_csv(path, required=("ID", "spk_id")):
    """Header and rows of a CSV, checking that ``required`` columns are present and non-empty.

    Arguments
    ---------
    path : str
        CSV file.
    required : sequence of str
        Columns that must exist and hold a value on every row.

    Returns
    -------
    fieldnames : list of str
        The header, in file order.
    rows : list of dict
        One dict of strings per data row, in file order.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "train.csv")
    >>> _ = open(path, "w").write("ID,duration,spk_id\\nu1,1.5,s1\\nu2,2.0,s2\\n")
    >>> fieldnames, rows = read_training_csv(path)
    >>> fieldnames, [r["spk_id"] for r in rows]
    (['ID', 'duration', 'spk_id'], ['s1', 's2'])
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        missing = [c for c in required if c not in fieldnames]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; header is {fieldnames}")
        rows = []
        for row in reader:
            if None in row:
                raise ValueError(f"{path}, line {reader.line_num}: more fields than the header")
            for column in required:
                if not row[column]:
                    raise ValueError(f"{path}, line {reader.line_num}: empty {column!r}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return fieldnames, rows


def write_training_csv(path, fieldnames, rows):
    """Write ``rows`` (dicts) under ``fieldnames`` to ``path`` via a temporary file and
    ``os.replace``, so a failure leaves no half-written file.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "out.csv")
    >>> write_training_csv(path, ["ID", "spk_id"], [{"ID": "u1", "spk_id": "s1"}])
    >>> open(path).read()
    'ID,spk_id\\nu1,s1\\n'
    """
    write_csv_atomic(path, fieldnames, rows)

