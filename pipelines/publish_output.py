"""Read one JSON object on stdin (an `mlops-nb ... --json` output) and publish some of its keys as step outputs of the
CI system: GitHub Actions ($GITHUB_OUTPUT), Azure DevOps (##vso output variables), GitLab CI (a dotenv report,
mlops-nb-outputs.env, of variables NAME_KEY), or plain `key=value` lines. True and false are written `true` and `false`,
as the systems' expressions compare them. `--tag KEY` also tags an Azure DevOps run with KEY when that key is true (a
pipeline resource trigger can start another pipeline on the tag); on GitLab it writes the child pipeline
mlops-nb-next.yml, which runs the project's .gitlab-ci.yml when every tagged key is true and only says why not
otherwise."""
import argparse, json, os, re, sys

GITLAB_OUTPUTS, GITLAB_NEXT = "mlops-nb-outputs.env", "mlops-nb-next.yml" # the artifacts .gitlab-ci.yml declares

def _text(v)->str: return json.dumps(v) if isinstance(v, bool) else str(v)

def _gitlab_next(obj:dict, tags)->str:
    ("The child pipeline a GitLab trigger job runs: the project's pipeline when "
     "every tagged key is true, else one job saying why not.")
    if all(obj[k] is True for k in tags): return "include:\n  - local: .gitlab-ci.yml\n"
    line = "echo 'not started: " + ", ".join(f"{k} is not true" for k in tags) + "'"  # tags: checked names
    return f"not-started:\n  script:\n    - {json.dumps(line)}\n"  # a JSON string is a YAML scalar, whatever it holds

def publish(obj:dict, keys:list, env=os.environ, out=sys.stdout, tags=(), name:str="")->list:
    ("Publish `keys` of `obj` as step outputs (and, on Azure DevOps, tag the run "
     "with each of `tags` that is true); return the lines written.")
    missing = [k for k in [*keys, *tags] if k not in obj]
    if missing:
        raise SystemExit(f"error: the JSON has no key(s) {', '.join(missing)}; it has {', '.join(obj) or 'none'}")
    # a line break would forge further outputs or ##vso commands
    broken = [k for k in keys if any(c in _text(obj[k]) for c in "\r\n")]
    if broken: raise SystemExit(f"error: the value of {', '.join(broken)} spans several lines: refused")
    lines = [f"{k}={_text(obj[k])}" for k in keys]
    if env.get("GITHUB_OUTPUT"):
        with open(env["GITHUB_OUTPUT"], "a") as f: f.write("".join(l + "\n" for l in lines))
    elif env.get("GITLAB_CI") == "true":  # GitLab: jobs that need this one read NAME_KEY from its dotenv report
        with open(GITLAB_OUTPUTS, "a") as f:
            f.write("".join(f"{name.upper()}_{k.upper()}={_text(obj[k])}\n" if name else f"{k}={_text(obj[k])}\n"
                            for k in keys))
        if tags:
            with open(GITLAB_NEXT, "w") as f: f.write(_gitlab_next(obj, tags))
    elif env.get("TF_BUILD"):
        for k in keys: print(f"##vso[task.setvariable variable={k};isOutput=true]{_text(obj[k])}", file=out)
        for k in tags:
            if obj[k] is True: print(f"##vso[build.addbuildtag]{k}", file=out)
    print("\n".join(lines), file=out if not env.get("TF_BUILD") else sys.stderr)
    return lines

def main(argv=None)->int:
    "Publish the given keys of the JSON object on stdin as step outputs."
    p = argparse.ArgumentParser(prog="python pipelines/publish_output.py", description=main.__doc__,
                                epilog="example: mlops-nb package --model champion --push --json | "
                                       "python pipelines/publish_output.py tag")
    p.add_argument("keys", nargs="+", help="keys to publish, e.g. tag")
    p.add_argument("--tag", action="append", default=[], metavar="KEY",
                   help="Azure DevOps: tag the run KEY when the key is true; GitLab: start the next pipeline only then")
    p.add_argument("--name", default="", metavar="OUT",
                   help="GitLab: publish the keys as OUT_KEY (e.g. --name package: PACKAGE_IMAGE)")
    a = p.parse_args(argv)
    try: obj = json.load(sys.stdin)
    except ValueError as e: raise SystemExit(f"error: stdin is not one JSON object ({e})")
    if not isinstance(obj, dict): raise SystemExit("error: stdin is not one JSON object")
    bad = [k for k in a.tag if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", k)]
    if bad: raise SystemExit(f"error: --tag {bad[0]!r} is not allowed: use letters, digits, _ and -")
    bad = [k for k in [a.name, *a.keys] if a.name and not re.fullmatch(r"[A-Za-z0-9_]{1,64}", k)]
    if bad: raise SystemExit(f"error: {bad[0]!r} is not allowed with --name: use letters, digits and _")
    publish(obj, a.keys, tags=a.tag, name=a.name)
    return 0

if __name__ == "__main__": sys.exit(main())
