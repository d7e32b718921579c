"""Read one JSON object on stdin (an `mlops-nb ... --json` output) and publish some of its keys as step outputs of the
CI system: GitHub Actions ($GITHUB_OUTPUT), Azure DevOps (##vso output variables), or plain `key=value` lines. True and
false are written `true` and `false`, as both systems' expressions compare them. `--tag KEY` also tags an Azure DevOps
run with KEY when that key is true: a pipeline resource trigger can start another pipeline on the tag."""
import argparse, json, os, re, sys

def _text(v)->str: return json.dumps(v) if isinstance(v, bool) else str(v)

def publish(obj:dict, keys:list, env=os.environ, out=sys.stdout, tags=())->list:
    "Publish `keys` of `obj` as step outputs (and, on Azure DevOps, tag the run with each of `tags` that is true); return the lines written."
    missing = [k for k in [*keys, *tags] if k not in obj]
    if missing: raise SystemExit(f"error: the JSON has no key(s) {', '.join(missing)}; it has {', '.join(obj) or 'none'}")
    broken = [k for k in keys if any(c in _text(obj[k]) for c in "\r\n")]  # a line break would forge further outputs or ##vso commands
    if broken: raise SystemExit(f"error: the value of {', '.join(broken)} spans several lines: refused")
    lines = [f"{k}={_text(obj[k])}" for k in keys]
    if env.get("GITHUB_OUTPUT"):
        with open(env["GITHUB_OUTPUT"], "a") as f: f.write("".join(l + "\n" for l in lines))
    elif env.get("TF_BUILD"):
        for k in keys: print(f"##vso[task.setvariable variable={k};isOutput=true]{_text(obj[k])}", file=out)
        for k in tags:
            if obj[k] is True: print(f"##vso[build.addbuildtag]{k}", file=out)
    print("\n".join(lines), file=out if not env.get("TF_BUILD") else sys.stderr)
    return lines

def main(argv=None)->int:
    "Publish the given keys of the JSON object on stdin as step outputs."
    p = argparse.ArgumentParser(prog="python pipelines/publish_output.py", description=main.__doc__,
                                epilog="example: mlops-nb package --model champion --push --json | python pipelines/publish_output.py tag")
    p.add_argument("keys", nargs="+", help="keys to publish, e.g. tag")
    p.add_argument("--tag", action="append", default=[], metavar="KEY", help="Azure DevOps: tag the run KEY when the key is true")
    a = p.parse_args(argv)
    try: obj = json.load(sys.stdin)
    except ValueError as e: raise SystemExit(f"error: stdin is not one JSON object ({e})")
    if not isinstance(obj, dict): raise SystemExit("error: stdin is not one JSON object")
    bad = [k for k in a.tag if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", k)]
    if bad: raise SystemExit(f"error: --tag {bad[0]!r} is not allowed: use letters, digits, _ and -")
    publish(obj, a.keys, tags=a.tag)
    return 0

if __name__ == "__main__": sys.exit(main())
