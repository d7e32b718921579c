"""Notebook-first MLOps: literate notebooks -> parameterised training runs -> tracked, registered, served models

Modules:

- `mlops_nb.databricks`: Run the training notebook as a Databricks job: the checkout's own wheel uploaded and attached, parameters injected with papermill, the notebook imported into the workspace, a one-time run submitted (or a job declared in the bundle run now) and followed to its result; credentials through databricks-sdk's unified auth."""

__version__ = "0.2.0"
