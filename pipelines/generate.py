"""Write the cloud pipelines (.github/workflows/*.yml, pipelines/azure/*.yml) and, in a project that has one (or with
--bundle), the Databricks Asset Bundle (databricks.yml, resources/*.yml), generated from mlops_nb.pipeline's PIPELINES
and CLOUD for this project; with --check, write nothing and exit 1 naming the files that differ."""
import argparse, dataclasses, sys
from pathlib import Path
from mlops_nb.core import MlopsNbError

def main(argv=None)->int:
    "Generate (or check) the project's GitHub Actions workflows, Azure DevOps pipelines and Databricks Asset Bundle."
    p = argparse.ArgumentParser(prog="python pipelines/generate.py", description=main.__doc__)
    p.add_argument("--root", default=".", help="project folder (default: the current one)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when a file differs from what is generated")
    p.add_argument("--bundle", action="store_true",
                   help="also write the Databricks Asset Bundle (default: when databricks.yml "
                   "exists; the jobs need profiles/dev.yaml's databricks cluster and the notebooks they run)")
    a = p.parse_args(argv)
    from mlops_nb.pipeline import project_settings
    from mlops_nb.pipeline_files import write_pipelines
    from mlops_nb.bundle import write_bundle
    bundle = a.bundle or (Path(a.root)/"databricks.yml").exists()
    try:
        settings = dataclasses.replace(project_settings(a.root), bundle=bundle)  # the pipelines validate and deploy it
        changed = write_pipelines(a.root, settings, check=a.check) + (write_bundle(a.root, settings, check=a.check)
                                                                      if bundle else [])
    except MlopsNbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for rel in changed: print(f"{'differs' if a.check else 'written'}: {rel}", file=sys.stderr)
    if not changed:
        print("the cloud pipelines" + (" and the bundle" if bundle else "") + " are up to date", file=sys.stderr)
    return 1 if a.check and changed else 0

if __name__ == "__main__": sys.exit(main())
