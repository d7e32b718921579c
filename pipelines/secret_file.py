"""Write a secret held in an environment variable (e.g. a kubeconfig in KUBE_CONFIG) to a file only this user can read:
one pipeline step, so that later steps find it by path (KUBECONFIG). The secret is never printed."""
import argparse, os, sys

def main(argv=None)->int:
    "Write the content of environment variable VAR to PATH with mode 600 (replacing PATH)."
    p = argparse.ArgumentParser(prog="python pipelines/secret_file.py", description=main.__doc__,
                                epilog='example: python pipelines/secret_file.py KUBE_CONFIG "$KUBECONFIG"')
    p.add_argument("var", help="environment variable holding the secret, e.g. KUBE_CONFIG")
    p.add_argument("path", help="file to write, e.g. \"$KUBECONFIG\"")
    a = p.parse_args(argv)
    text = os.environ.get(a.var, "")
    if not text.strip():
        print(f"error: {a.var} is empty or not set: store the secret as {a.var} where this pipeline can read it",
              file=sys.stderr)
        return 1
    if os.path.lexists(a.path): os.unlink(a.path)  # a new file, so that mode 600 applies from the first byte
    fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f: f.write(text if text.endswith("\n") else text + "\n")
    print(f"{a.var} written to {a.path} (mode 600, {len(text)} characters)", file=sys.stderr)
    return 0

if __name__ == "__main__": sys.exit(main())
