"""Notebook-first MLOps: literate notebooks -> parameterised training runs -> tracked, registered, served models

Modules:

- `mlops_nb.databricks`: Run the training notebook as a Databricks job: the checkout's own wheel uploaded and attached, parameters injected with papermill, the notebook imported into the workspace, a one-time run submitted (or a job declared in the bundle run now) and followed to its result; credentials through databricks-sdk's unified auth.
- `mlops_nb.report`: The monitoring report people look at: one self-contained HTML page per `monitor` run, drawn from the `--json` dict: per-feature drift, reference against current distributions of the drifted features, decay, estimated and measured metrics per window of the inference log."""

__version__ = "0.2.0"
