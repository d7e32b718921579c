"""Select the best registered version by a metric and point an alias (champion) at it: one pipeline step.

With a shadow period (--after-shadow LOG_DIR, or MLOPS_NB_SHADOW_LOG), a new best version is promoted only once it has
answered enough logged requests as the shadow (`mlops-nb serve --shadow challenger --log-dir LOG_DIR`); until then it
becomes the `challenger` (the champion keeps serving) and the step says what it waits for."""
import argparse, json, os, sys
from mlops_nb.core import DataError, MlopsNbError

def main(argv=None)->int:
    ("Select the best version by `--metric` (default: the problem's primary metric) among "
     "versions evaluated on the latest version's data, and promote it.")
    p = argparse.ArgumentParser(prog="python pipelines/promote.py", description=main.__doc__)
    p.add_argument("--metric", default=None, help="metric to select by (default: the problem's primary metric)")
    p.add_argument("--lower-is-better", action="store_true",
                   help="pick the smallest value (default: the problem's direction)")
    p.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    p.add_argument("--name", default=None, help="registered model name (default: MLOPS_NB_MODEL_NAME or the problem's)")
    p.add_argument("--after-shadow", default=os.environ.get("MLOPS_NB_SHADOW_LOG") or None, metavar="LOG_DIR",
                   help="promote a new version only after its shadow period in this inference log; until then it "
                        "becomes the challenger (default: MLOPS_NB_SHADOW_LOG; none: promote at once)")
    p.add_argument("--min-shadow-rows", type=int, default=int(os.environ.get("MLOPS_NB_MIN_SHADOW_ROWS") or 1000),
                   help="rows the shadow period asks for (default: MLOPS_NB_MIN_SHADOW_ROWS or 1000)")
    a = p.parse_args(argv)
    from mlops_nb.tracking import best_version, promote, version_for_alias
    try:
        s = best_version(a.metric, higher_is_better=False if a.lower_is_better else None, name=a.name)
        v, waiting = s.version.version, None
        if a.after_shadow and v != version_for_alias(a.alias, a.name):
            from mlops_nb.inference_log import check_shadow_period
            try: check_shadow_period(a.after_shadow, v, a.min_shadow_rows)
            except DataError as e: waiting = str(e)
        prev = promote(v, "challenger" if waiting else a.alias, a.name)  # the gates are checked either way
    except MlopsNbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(s.note, file=sys.stderr)
    if waiting: print(f"v{v} is the challenger, {a.alias} unchanged: {waiting}", file=sys.stderr)
    print(json.dumps({"alias": "challenger" if waiting else a.alias, "version": v, "previous": prev, "metric": s.metric,
                      "value": s.version.metrics[s.metric], "promoted": not waiting, "waiting_for": waiting}))
    return 0

if __name__ == "__main__": sys.exit(main())
