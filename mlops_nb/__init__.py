"""Notebook-first MLOps: literate notebooks -> parameterised training runs -> tracked, registered, served models

Modules:

- `mlops_nb.databricks`: Run the training notebook as a Databricks job: parameters injected with papermill, the notebook imported into the workspace, a one-time run submitted and followed to its result, failures and timeouts named and cancelled."""

__version__ = "0.2.0"
