"""Read one JSON object on stdin (an `mlops-nb ... --json` output) and publish some of its keys as step outputs of the
CI system: GitHub Actions ($GITHUB_OUTPUT), Azure DevOps (##vso output variables), or plain `key=value` lines."""
import argparse, json, os, sys

def publish(obj:dict, keys:list, env=os.environ, out=sys.stdout)->list:
    "Publish `keys` of `obj` as step outputs; return the `key=value` lines written."
    missing = [k for k in keys if k not in obj]
    if missing: raise SystemExit(f"error: the JSON has no key(s) {', '.join(missing)}; it has {', '.join(obj) or 'none'}")
    broken = [k for k in keys if any(c in str(obj[k]) for c in "\r\n")]  # a line break would forge further outputs or ##vso commands
    if broken: raise SystemExit(f"error: the value of {', '.join(broken)} spans several lines: refused")
    lines = [f"{k}={obj[k]}" for k in keys]
    if env.get("GITHUB_OUTPUT"):
        with open(env["GITHUB_OUTPUT"], "a") as f: f.write("".join(l + "\n" for l in lines))
    elif env.get("TF_BUILD"):
        for k in keys: print(f"##vso[task.setvariable variable={k};isOutput=true]{obj[k]}", file=out)
    print("\n".join(lines), file=out if not env.get("TF_BUILD") else sys.stderr)
    return lines

def main(argv=None)->int:
    "Publish the given keys of the JSON object on stdin as step outputs."
    p = argparse.ArgumentParser(prog="python pipelines/publish_output.py", description=main.__doc__,
                                epilog="example: mlops-nb package --model champion --push --json | python pipelines/publish_output.py tag")
    p.add_argument("keys", nargs="+", help="keys to publish, e.g. tag")
    a = p.parse_args(argv)
    try: obj = json.load(sys.stdin)
    except ValueError as e: raise SystemExit(f"error: stdin is not one JSON object ({e})")
    publish(obj, a.keys)
    return 0

if __name__ == "__main__": sys.exit(main())
