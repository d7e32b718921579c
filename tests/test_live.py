"""Live checks against real cloud services: they run only where credentials are set (never here, never in CI
without them), and say so when skipped. They touch nothing but what they name."""
import json, os
import pytest



def _databricks_credentials():
    ("Whether the environment names a workspace and a credential the "
     "runner accepts (the pipelines use OAuth M2M or OIDC).")
    from mlops_nb.databricks import credential_kind
    return bool(os.environ.get("DATABRICKS_HOST") and credential_kind())


databricks = pytest.mark.skipif(not _databricks_credentials(),
                                reason="live Databricks: set DATABRICKS_HOST and a credential (DATABRICKS_CLIENT_ID "
                                       "and DATABRICKS_CLIENT_SECRET, or DATABRICKS_TOKEN)")
azure = pytest.mark.skipif(not all(os.environ.get(v)
                                   for v in ("AZURE_SUBSCRIPTION_ID", "AZUREML_RESOURCE_GROUP", "AZUREML_WORKSPACE")),
                           reason="live Azure ML: set AZURE_SUBSCRIPTION_ID, "
                                  "AZUREML_RESOURCE_GROUP, AZUREML_WORKSPACE and a credential")


@databricks
def test_databricks_workspace_answers_and_folder_is_writable():
    "The token works and the integration folder can be created and imported into (a PR run's first two steps)."
    from mlops_nb.databricks import workspace_folder
    from databricks.sdk import WorkspaceClient
    w = WorkspaceClient()
    assert w.current_user.me().user_name
    folder = workspace_folder(branch="mlops-nb-live-check")
    w.workspace.mkdirs(folder)
    assert any(o.path.endswith("mlops-nb-live-check") for o in w.workspace.list(folder.rsplit("/", 1)[0]))
    w.workspace.delete(folder, recursive=True)


@databricks
@pytest.mark.skipif(not os.environ.get("DATABRICKS_CLUSTER"),
                    reason="live Databricks run: set DATABRICKS_CLUSTER (job-cluster JSON)")
def test_databricks_test_mode_run():
    """The training notebook in test mode as a real one-time job run, with the checkout's own wheel attached, as the
    pipelines run it (`mlops-nb train --runner databricks --wheel`)."""
    from mlops_nb.databricks import DatabricksRunner
    from mlops_nb.params import make_params
    r = DatabricksRunner(branch="mlops-nb-live-check", cluster=json.loads(os.environ["DATABRICKS_CLUSTER"]), wheel=True)
    res = r.submit(make_params(mode="test")).wait(3600)
    assert res.mode == "test" and res.registered_version is None and "roc_auc" in res.metrics


@azure
def test_azureml_tracking_uri():
    "The workspace's MLflow URI resolves with the environment's credential."
    from mlops_nb.backends import azureml_tracking_uri
    uri = azureml_tracking_uri(os.environ["AZURE_SUBSCRIPTION_ID"], os.environ["AZUREML_RESOURCE_GROUP"],
                               os.environ["AZUREML_WORKSPACE"])
    assert uri.startswith("azureml://") and os.environ["AZUREML_WORKSPACE"] in uri
