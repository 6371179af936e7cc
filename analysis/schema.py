"""The results contract between the study (writer) and the analysis (reader).

Layout of one study under a storage folder::

    STORAGE/NAME/study.json            name, spec hash, status (running / finished), created
    STORAGE/NAME/spec.yaml             the spec as given
    STORAGE/NAME/results/part-TRIAL.parquet   tidy metric rows of one trial (RESULT_SCHEMA)
    STORAGE/NAME/trials/TRIAL.parquet         one status row per trial (TRIAL_SCHEMA)

Files are written to a dot-prefixed temporary name and renamed, so readers never see a partial file
(pyarrow datasets ignore dot-prefixed files). A trial's part is rewritten with all its epochs so far,
keyed by epoch, so a resumed trial never duplicates or drops an epoch.
"""

from __future__ import annotations

import pyarrow as pa

RESULT_SCHEMA = pa.schema([
    ("study", pa.string()),
    ("spec_hash", pa.string()),
    ("trial_id", pa.string()),
    ("problem", pa.string()),
    ("architecture", pa.string()),
    ("method", pa.string()),          # display label, unique per method configuration in a study
    ("weighting", pa.string()),       # loss weighting name ("" if none)
    ("aggregator", pa.string()),      # gradient method name ("" if none)
    ("method_params", pa.string()),   # canonical JSON of the method's configuration
    ("seed", pa.int64()),
    ("epoch", pa.int32()),            # 1-based: metrics after this many training epochs
    ("split", pa.string()),           # train / val / test
    ("task", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("higher_is_better", pa.bool_()),
    ("time_epoch_s", pa.float64()),   # wall time of the epoch's training steps
    ("time_step_s", pa.float64()),    # median wall time of one training step in that epoch
])

TRIAL_STATUSES = ("running", "completed", "errored", "diverged", "early_stopped")

TRIAL_SCHEMA = pa.schema([
    ("study", pa.string()),
    ("spec_hash", pa.string()),
    ("trial_id", pa.string()),
    ("problem", pa.string()),
    ("architecture", pa.string()),
    ("method", pa.string()),
    ("weighting", pa.string()),
    ("aggregator", pa.string()),
    ("method_params", pa.string()),
    ("seed", pa.int64()),
    ("status", pa.string()),          # one of TRIAL_STATUSES
    ("reason", pa.string()),          # why it ended (error line, divergence epoch), "" if completed
    ("epochs_done", pa.int32()),
    ("epochs_planned", pa.int32()),
    ("device", pa.string()),
    ("gpus", pa.float64()),           # GPUs the trial held (fractional allowed), for GPU-hours
    ("time_total_s", pa.float64()),
    ("config", pa.string()),          # full trial config as JSON
    ("node", pa.string()),            # Ray node id the trial ran on (last one, if it moved)
    ("started_at", pa.float64()),     # unix time the trial's process started (its latest attempt)
    ("ended_at", pa.float64()),       # unix time it ended (null while running)
    ("restarts", pa.int32()),         # times Ray restarted it from its checkpoint (worker death, errors)
])

RESULTS_DIR = "results"
TRIALS_DIR = "trials"
STUDY_FILE = "study.json"
