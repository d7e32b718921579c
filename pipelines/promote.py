"""Select the best registered version by a metric and point an alias (champion) at it: one pipeline step."""
import argparse, json, sys
from mlops_nb.core import MlopsNbError

def main(argv=None)->int:
    "Select the best version by `--metric` (default: the problem's primary metric) among versions evaluated on the latest version's data, and promote it."
    p = argparse.ArgumentParser(prog="python pipelines/promote.py", description=main.__doc__)
    p.add_argument("--metric", default=None, help="metric to select by (default: the problem's primary metric)")
    p.add_argument("--lower-is-better", action="store_true", help="pick the smallest value (default: the problem's direction)")
    p.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    p.add_argument("--name", default=None, help="registered model name (default: MLOPS_NB_MODEL_NAME or the problem's)")
    a = p.parse_args(argv)
    from mlops_nb.tracking import best_version, promote
    try:
        s = best_version(a.metric, higher_is_better=False if a.lower_is_better else None, name=a.name)
        prev = promote(s.version.version, a.alias, a.name)
    except MlopsNbError as e:
        print(f"error: {e}", file=sys.stderr); return e.exit_code
    print(s.note, file=sys.stderr)
    print(json.dumps({"alias": a.alias, "version": s.version.version, "previous": prev, "metric": s.metric,
                      "value": s.version.metrics[s.metric]}))
    return 0

if __name__ == "__main__": sys.exit(main())
