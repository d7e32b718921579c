"""The `mlops-nb` CLI as a user runs it: help everywhere, one-line errors for bad input, nothing written to the cwd."""
import os
import pytest
from conftest import run_cli, cli_json, cli_here
from mlops_nb.cli import commands

COMMANDS = [[], *commands()]  # every command and subcommand, as the parser declares them


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "mlops-nb")
def test_help_everywhere(cmd):
    "Every command's help, through the installed executable: no argparse `%%` artefact, no traceback."
    p = run_cli(*cmd, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(" ".join(["usage: mlops-nb", *cmd])), p.stdout
    assert len(p.stdout.splitlines()) > 3
    assert "%%" not in p.stdout and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr


def test_help_lists_commands():
    out = run_cli("--help").stdout
    for c in ("data", "train", "models", "demo", "config"): assert f"    {c}" in out


def test_missing_subcommand_says_what_to_do():
    p = run_cli("models")
    assert p.returncode == 2 and "choose a subcommand (list|best|promote)" in p.stderr


def _bad_files(d):
    "Files with each kind of bad data, and the words their error must contain."
    from mlops_nb.examples.ottawa import generate_listings
    df = generate_listings(2021, 50, seed=1)
    df.drop(columns=["sqft"]).to_csv(d/"no_sqft.csv", index=False)
    wrong = df.astype({"list_price": object})
    wrong.loc[3, "list_price"] = "abc"
    wrong.to_csv(d/"wrong_type.csv", index=False)
    (d/"empty.csv").write_text("")
    (d/"garbage.parquet").write_bytes(b"\x00\x01not parquet at all" * 10)
    return [("no_sqft.csv", ["sqft", "missing"]), ("wrong_type.csv", ["list_price", "abc"]),
            ("empty.csv", ["empty"]), ("garbage.parquet", ["garbage.parquet"]),
            ("does_not_exist.csv", ["does_not_exist.csv"])]


def _assert_one_line_error(p, *words):
    "Exit code 2, one line on stderr starting with `error:`, containing `words`, no traceback, nothing on stdout."
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    for w in words: assert w in lines[0], (w, lines[0])


def test_bad_data_one_line_error(tmp_path, state):
    for name, words in _bad_files(tmp_path):
        _assert_one_line_error(run_cli("data", "check", tmp_path/name), name, *words)


def test_train_refuses_bad_data_before_starting_a_run(tmp_path, state):
    for name, words in _bad_files(tmp_path):
        p = run_cli("train", "--mode", "test", "--data", tmp_path/name)
        assert p.returncode == 2 and name in p.stderr and "Traceback" not in p.stderr, p.stderr
    from mlops_nb.tracking import client, experiment_id
    assert client().search_runs([experiment_id()]) == []


@pytest.mark.parametrize("args,words", [
    (["--mode", "tset"], ["mode='tset' is not allowed", "'test'", "'full'"]),
    (["--mode", "full", "--epochs", "-1"], ["epochs='-1' is not allowed", "whole number >= 1"]),
    (["--mode", "test", "--sample-frac", "0"], ["sample_frac='0' is not allowed", "greater than 0 and at most 1"]),
    (["--mode", "test", "--seed", "x"], ["seed='x'"]),
])
def test_bad_parameters_one_line_error(args, words, state):
    _assert_one_line_error(run_cli("train", *args), *words)


def test_generate_and_check(tmp_path, state):
    out = cli_json("data", "generate", "--year", "2022", "--rows", "500", "--seed", "3", "--out", tmp_path/"x.csv")
    assert out["rows"] == 500 and out["path"].endswith("x.csv") and 0 < out["class_shares"]["above_asking"] < 1
    chk = cli_json("data", "check", tmp_path/"x.csv")
    assert (
        chk["rows"] == 500 and chk["fingerprint"] == out["fingerprint"] and chk["class_shares"] == out["class_shares"]
    )
    again = cli_json("data", "generate", "--year", "2022", "--rows", "500", "--seed", "3", "--out",
                     tmp_path/"y.parquet")
    assert again["fingerprint"] == out["fingerprint"]  # same seed, same data, whatever the format
    _assert_one_line_error(run_cli("data", "generate", "--year", "2022", "--rows", "0", "--out", tmp_path/"z.csv"),
                           "--rows 0")
    _assert_one_line_error(run_cli("data", "generate", "--year", "2022", "--rows", "5", "--out", tmp_path/"z.txt"),
                           "z.txt")


def test_config_shows_the_embedded_default(state):
    out = cli_json("config")
    assert out["state_dir"] == str(state) and out["tracking_uri"] == f"sqlite:///{state}/mlflow.db"
    assert out["registry_uri"] == out["tracking_uri"]


def test_tracking_uri_is_configuration(tmp_path, state):
    env = {**os.environ, "MLOPS_NB_TRACKING_URI": f"sqlite:///{tmp_path}/other.db"}
    assert cli_json("config", env=env)["tracking_uri"] == f"sqlite:///{tmp_path}/other.db"
    assert cli_json("models", "list", env=env) == []
    assert (tmp_path/"other.db").exists()


def test_config_never_prints_a_credential(tmp_path, state):
    "Every credential form the second audit found printed by `config` is hidden, in text and --json output."
    forms = {"MLOPS_NB_TRACKING_URI": "postgresql://u:S3CRETb/x@db/mlflow",
             "MLOPS_NB_REGISTRY_URI": "https://ws.example/mlflow?api_key=S3CRETk&x=1"}
    env = {**os.environ, **forms}
    for extra in ([], ["--json"]):
        out = run_cli("config", *extra, env=env, check=True).stdout
        assert "S3CRET" not in out and "db/mlflow" in out and "ws.example" in out, out
    for uri in ("s3://b/p?region=x&access_key=S3CRETa",
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=S3CRETz==;x=y"):
        p = run_cli("config", env={**os.environ, "MLOPS_NB_TRACKING_URI": uri})
        assert p.returncode == 0 and "S3CRET" not in p.stdout + p.stderr, p.stdout + p.stderr


def test_default_state_is_project_local_not_cwd(tmp_path):
    "Without MLOPS_NB_HOME, state goes to <project>/.mlops_nb even when run from a subfolder."
    from conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k not in ("MLOPS_NB_HOME", "MLOPS_NB_TRACKING_URI")}
    out = cli_json("config", env=env, cwd=ROOT/"nbs")
    assert out["state_dir"] == str(ROOT/".mlops_nb")


def test_monitor_json_contract(tmp_path, state):
    "`monitor --json`: drift between market years, none within a year; --fail-on-retrain exits 1 with the reasons."
    for year, seed in ((2021, 0), (2021, 1), (2023, 0)):
        cli_json("data", "generate", "--year", year, "--rows", "3000", "--seed", seed, "--out",
                 tmp_path/f"{year}-{seed}.parquet")
    same = cli_json("monitor", "--reference", tmp_path/"2021-0.parquet", "--current", tmp_path/"2021-1.parquet")
    assert (
        same["drift"] is False and same["retrain"] is False and set(same["features"]) >= {"list_price", "neighbourhood"}
    )
    assert same["overlap"] == {"rows": 0, "share": 0.0, "same_data": False}
    itself = run_cli("monitor", "--reference", tmp_path/"2021-0.parquet", "--current", tmp_path/"2021-0.parquet",
                     check=True)
    said = [l for l in itself.stdout.splitlines() if l.startswith("overlap: ")]
    assert said == ["overlap: 3000 of 3000 current rows (100%) are the same rows as the reference: drift and decay "
                    "measured on rows the model may have been trained on say little"], itself.stdout
    assert "overlap" not in run_cli("monitor", "--reference", tmp_path/"2021-0.parquet", "--current",
                                    tmp_path/"2021-1.parquet").stdout
    moved = cli_json("monitor", "--reference", tmp_path/"2021-0.parquet", "--current", tmp_path/"2023-0.parquet")
    assert moved["drift"] is True and "days_on_market" in moved["drifted"] and moved["decay"] is None
    p = run_cli("monitor", "--reference", tmp_path/"2021-0.parquet", "--current", tmp_path/"2023-0.parquet",
                "--fail-on-retrain")
    assert p.returncode == 1 and "retraining advised: feature drift: days_on_market" in p.stderr
    p = run_cli("monitor", "--reference", tmp_path/"2021-0.parquet", "--current", tmp_path/"2023-0.parquet",
                "--threshold", "psi=abc")
    assert p.returncode == 2 and "psi" in p.stderr and "Traceback" not in p.stderr
    _assert_one_line_error(run_cli("monitor", "--reference", tmp_path/"2021-0.parquet", "--current",
                                   tmp_path/"2023-0.parquet",
                                   "--threshold", "psi"), "--threshold 'psi' is not allowed: use KEY=VALUE")


# --- audit finding 8: the remaining user errors end in one line, not a traceback ------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--host", "no-such-host.invalid"], ["--host 'no-such-host.invalid' is not an address of this machine"]),
    (["--port", "99999"], ["--port 99999 is not allowed", "0 (any free port) to 65535"]),
    (["--port", "-1"], ["--port -1 is not allowed"]),
])
def test_serve_refuses_a_bad_address_before_loading_anything(args, words, state):
    _assert_one_line_error(run_cli("serve", *args, "--model", "no-such-model", timeout=60), *words)


def test_serve_says_when_the_port_is_taken(state):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        _assert_one_line_error(run_cli("serve", "--port", port, "--model", "no-such-model", timeout=60),
                               f"cannot listen on 127.0.0.1:{port}", "choose another --port")


def test_a_reader_that_goes_away_is_no_error(state):
    "`mlops-nb … | head -1`: the reader closes the pipe; no traceback, the exit status a Unix tool gives (141)."
    import subprocess
    from conftest import CLI
    for args in (["--help"], ["config", "--json"]):
        r, w = os.pipe()
        os.close(r)  # the reader is gone before anything is written
        p = subprocess.run([CLI, *args], stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(w)
        assert p.returncode in (0,
                                141) and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, (args, p.stderr)
        assert p.stderr == "", p.stderr


def test_ctrl_c_outside_a_run_is_one_line(state, tmp_path):
    "SIGINT during a long command that has no run: 'interrupted', exit 130, no traceback and no claim about a run."
    import signal, subprocess, time
    from conftest import CLI
    p = subprocess.Popen([CLI, "data", "generate", "--year", "2022", "--rows", "20000000", "--out",
                          tmp_path/"big.parquet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # importing, then generating rows
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and out == "", (p.returncode, err)
    assert err.strip().splitlines()[-1] == "interrupted", err
    assert not (tmp_path/"big.parquet").exists()


def test_the_wheel_task_entry_point_is_the_same_cli(state):
    "`mlops-nb-task` (the bundle's Python wheel tasks) runs the same commands and exit codes, ending with sys.exit."
    import subprocess
    from conftest import CLI
    task = CLI + "-task"
    p = subprocess.run([task, "config", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "tracking_uri" in p.stdout, p.stderr
    p = subprocess.run([task, "models", "promote", "x"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path, state):
    """Audit finding 8: the disk fills while `data generate` writes (a file-size limit: the kernel then refuses writes
    as on a full disk). One line, exit 2; no half-written file, and a file that was there keeps its content."""
    import resource, signal, subprocess
    from conftest import CLI
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with an error instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    for name in ("new.csv", "new.parquet", "old.parquet"):
        out = tmp_path/name
        if name.startswith("old"): out.write_bytes(b"what the user had")
        p = subprocess.run([CLI, "data", "generate", "--year", "2022", "--rows", "5000", "--out", out],
                           preexec_fn=small_disk,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith(f"error: {out}: cannot be written"), p.stderr
        assert (out.read_bytes() == b"what the user had") if name.startswith("old") else not out.exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["old.parquet"]  # no temporary file left either


def _assert_ends_with_one_error(p, *words):
    "Exit code 2; stderr: progress lines, then one line starting with `error:` that holds `words`; no traceback."
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert lines[-1].startswith("error: ") and sum(l.startswith("error") for l in lines) == 1, p.stderr
    for w in words: assert w in lines[-1], (w, lines[-1])


def _zero_row_inputs(d):
    "The same zero-row table as CSV and as Parquet."
    from mlops_nb.examples.ottawa import generate_listings
    empty = generate_listings(2021, 20, seed=0).head(0)
    empty.to_csv(d/"zero.csv", index=False)
    empty.to_parquet(d/"zero.parquet")
    return d/"zero.csv", d/"zero.parquet"


def test_the_second_audits_command_lines_get_one_line(tmp_path, state, model_dir):
    """Audit 2, finding 6: paths that cannot be written, a negative worker count or watch interval, an endless secret
    file, zero-row input: each one line, exit 2, no traceback; zero rows the same for CSV and Parquet. The commands
    refused before any work run the CLI's main in this process (each process would import MLflow again); `serve` runs
    as the executable, so that a check that stopped refusing would time out instead of serving inside the test."""
    data = tmp_path/"in.csv"
    assert cli_here("data", "generate", "--year", "2021", "--rows", "200", "--out", data).returncode == 0
    score = ("score", "--model", model_dir, "--input", data)
    # the output folders are made when scoring starts: a progress line, then the error
    _assert_ends_with_one_error(cli_here(*score, "--output", "/proc/nope/out"), "/proc/nope")
    _assert_one_line_error(cli_here(*score, "--output", data/"sub"), "in.csv", "is a file")
    _assert_one_line_error(cli_here(*score, "--output", tmp_path/"o", "--workers", "-1"), "workers=-1")
    # these two say what they are doing first: then one error line
    _assert_ends_with_one_error(cli_here("new", "/proc/x/p", "--data", data, "--target", "sold_above_ask"), "/proc/x")
    _assert_ends_with_one_error(cli_here("data", "generate", "--rows", "10", "--out", "/proc/x/y.csv"), "/proc/x")
    for watch in ("-1", "nan"): _assert_one_line_error(run_cli("serve", "--watch", watch, "--port", "0"), "--watch")
    secret = run_cli("serve", "--model", model_dir, "--port", "0",
                     env={**os.environ, "MLOPS_NB_API_KEY_FILE": "/dev/zero"})
    _assert_one_line_error(secret, "MLOPS_NB_API_KEY_FILE=/dev/zero", "not a secret file")
    for f in _zero_row_inputs(tmp_path):
        out = tmp_path/f"out-{f.suffix[1:]}"
        p = cli_here("score", "--model", model_dir, "--input", f, "--output", out)
        _assert_ends_with_one_error(p, "no rows to score")
        assert not out.exists()
