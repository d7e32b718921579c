"""Drift on Spark (`mlops-nb monitor --engine spark`) against the local engine on the same data, on the one shared local
session: the same PSI on the same bins (here the local engine's edges), the same KS decisions (the statistic from the
reference profile's CDF, within 1/GRID), the same decay and verdict."""
import json
import numpy as np, pandas as pd
import pytest
from spark_fixtures import spark  # noqa: F401 (the shared session fixture)
from mlops_nb.drift import drift_report
from mlops_nb.reference import GRID, spark_drift_report
from mlops_nb.examples.ottawa import generate_listings

pytestmark = pytest.mark.xdist_group("spark")  # one worker, one JVM for every Spark test


def decisions(f:dict)->list:
    "The tests that found a feature drifted (`psi`, `ks`), without their figures."
    return [r.split()[0] for r in f["reasons"]]


def test_cli_monitor_engine_spark_gives_the_local_report(spark, state, model_dir, tmp_path, capsys):  # noqa: F811
    from mlops_nb.cli import main
    generate_listings(2018, 3000, seed=0).to_parquet(tmp_path/"ref.parquet")
    cur = generate_listings(2023, 2999, seed=1)
    cur.iloc[:1500].to_csv(tmp_path/"cur-1.csv", index=False)
    cur.iloc[1500:].to_csv(tmp_path/"cur-2.csv", index=False)
    outs = {}
    for engine, current in (("local", cur.to_parquet(tmp_path/"cur.parquet") or tmp_path/"cur.parquet"),
                            ("spark", tmp_path/"cur-*.csv")):
        assert main(["monitor", "--reference", str(tmp_path/"ref.parquet"), "--current", str(current), "--model",
                     str(model_dir),
                     "--engine", engine, "--json"]) == 0
        outs[engine] = json.loads(capsys.readouterr().out)
    a, b = outs["local"], outs["spark"]
    assert (a["drift"], a["retrain"], a["drifted"], a["rows"]) == (b["drift"], b["retrain"], b["drifted"], b["rows"])
    assert a["drifted"] == ["list_price", "days_on_market"] and a["rows"] == {"reference": 3000, "current": 2999}
    for c, f in a["features"].items():
        g = b["features"][c]
        assert abs(f["psi"] - g["psi"]) < 1e-6 and f["drifted"] == g["drifted"] and decisions(f) == decisions(g), c
        if "ks_stat" in f: assert abs(f["ks_stat"] - g["ks_stat"]) <= 1 / GRID, c
    assert set(a["decay"]) == set(b["decay"]) == {"roc_auc", "accuracy", "log_loss"}
    for m, d in a["decay"].items():
        assert abs(d["current"] - b["decay"][m]["current"]) < 1e-9 and abs(d["drop"] - b["decay"][m]["drop"]) < 1e-9
    assert main(["monitor", "--reference", str(tmp_path/"ref.parquet"), "--current", str(tmp_path/"cur.parquet"),
                 "--engine", "dask"]) == 2
    assert "--engine 'dask' is not allowed" in capsys.readouterr().err


def test_discrete_continuous_and_missing_values(spark):  # noqa: F811
    rng = np.random.default_rng(3)
    n = 20_000
    ref = pd.DataFrame({"d": rng.integers(0, 7, n).astype(float), "c": rng.normal(0, 1, n),
                        "s": rng.choice(list("abc"), n)})
    cur = pd.DataFrame({"d": rng.integers(1, 7, n).astype(float), "c": rng.normal(0.05, 1.1, n),
                        "s": rng.choice(list("abcd"), n)})
    ref.loc[::17, "c"] = np.nan
    cur.loc[::5, "d"] = np.inf
    kw = dict(numeric=["d", "c"], categorical=["s"])
    local = drift_report(ref, cur, **kw)
    remote = spark_drift_report(spark.createDataFrame(ref), spark.createDataFrame(cur), **kw)
    assert remote.exact_edges == {"d": True, "c": True}  # the local engine's edges, so the same PSI
    for c, f in local.features.items():
        g = remote.features[c]
        assert abs(f.psi - g.psi) < 1e-9 and (f.drifted, f.reasons) == (g.drifted, g.reasons), c
    assert (local.drifted, local.reasons, local.rows) == (remote.drifted, remote.reasons, remote.rows)
    assert set(remote.timings) >= {"reference", "features"}
    with pytest.raises(Exception, match="current data is missing column"):
        spark_drift_report(spark.createDataFrame(ref), spark.createDataFrame(cur.drop(columns=["c"])), **kw)


def test_drift_from_a_profile_on_spark_is_the_local_one(spark):  # noqa: F811
    """`reference.spark_counts` (one pass, numpy per partition) gives the local engine's counts, so the same report from
    the profile alone; a table of 400 features (wider than the JVM's 64 KB method limit allows one expression for)
    counts in the same one job."""
    from mlops_nb.reference import profile_of, profile_drift, spark_counts, current_counts
    rng = np.random.default_rng(5)
    ref = pd.DataFrame({"d": rng.integers(0, 7, 5000).astype(float), "c": rng.normal(0, 1, 5000),
                        "s": rng.choice(list("abc"), 5000)})
    cur = pd.DataFrame({"d": rng.integers(1, 7, 4000).astype(float), "c": rng.normal(0.2, 1.1, 4000),
                        "s": rng.choice(list("abcd"), 4000)})
    cur.loc[::5, "d"] = np.inf
    cur.loc[::7, "s"] = None
    prof = profile_of(ref, numeric=["d", "c"], categorical=["s"])
    local = profile_drift(prof, cur)
    remote = profile_drift(prof, None, counts=spark_counts(spark.createDataFrame(cur).repartition(3), prof))
    assert remote.rows == local.rows == {"reference": 5000, "current": 4000}
    for c, f in local.features.items():
        g = remote.features[c]
        assert (f.psi, f.ks_stat, f.drifted, f.reasons) == (g.psi, g.ks_stat, g.drifted, g.reasons), c
    wide_ref = pd.DataFrame(rng.normal(size=(2000, 400)), columns=[f"f{i}" for i in range(400)])
    wide = profile_of(wide_ref, numeric=list(wide_ref.columns), categorical=[])
    wide_cur = wide_ref.sample(frac=1, random_state=0) + 0.01
    counts = spark_counts(spark.createDataFrame(wide_cur), wide)
    assert counts == current_counts(wide_cur, wide)


def test_a_reference_profiled_on_spark_is_the_local_profile_or_counts_exactly_on_its_bins(spark):  # noqa: F811
    """`spark_profile` (two passes, partitions merged): `profile_of`'s profile while partitions send all their values;
    with 50 features each partition sends at most `sketch_size(50)` values per feature, the edges land within a few
    ranks per thousand of the exact ones, and the counts on those bins are exact, so the report is the one the local
    engine computes from that profile."""
    from mlops_nb.reference import profile_of, profile_drift, sketch_size, spark_profile, spark_profile_drift
    rng = np.random.default_rng(7)
    ref = pd.DataFrame({"d": rng.integers(0, 7, 3000).astype(float), "c": rng.normal(0, 1, 3000),
                        "s": rng.choice(list("abc"), 3000)})
    ref.loc[::11, "c"] = np.nan
    exact = {}
    prof = spark_profile(spark.createDataFrame(ref).repartition(3), ["d", "c"], ["s"], exact)
    local = profile_of(ref, numeric=["d", "c"], categorical=["s"])
    assert exact == {"d": True, "c": True} and prof.rows == local.rows
    assert {c: prof.features[c] for c in ("d", "c")} == {c: local.features[c] for c in ("d", "c")}
    assert sorted(prof.features["s"]["levels"]) == sorted(local.features["s"]["levels"])
    n = 2 * sketch_size(50) + 500  # rows per partition: more than a partition sends
    wide = pd.DataFrame(rng.normal(size=(2 * n, 50)), columns=[f"f{i:02d}" for i in range(50)])
    cur = wide.sample(frac=0.5, random_state=1) * 1.1 + 0.05
    exact = {}
    prof = spark_profile(spark.createDataFrame(wide).repartition(2), list(wide.columns), [], exact)
    assert not any(exact.values())
    for c, p in prof.features.items():
        x = np.sort(wide[c].to_numpy())
        ranks = np.searchsorted(x, p["edges"], side="left")
        assert np.abs(ranks - (np.arange(1, 10) * len(x)) // 10).max() <= len(x) // 200, c  # within half a percent
        assert p["counts"] == np.bincount(np.searchsorted(p["edges"], x), minlength=10).tolist(), c  # exact on its bins
        assert (p["n"], p["min"], p["max"]) == (len(x), x[0], x[-1])
    remote, local = spark_profile_drift(prof, spark.createDataFrame(cur)), profile_drift(prof, cur)
    for c, f in local.features.items():
        assert abs(f.psi - remote.features[c].psi) < 1e-6 and f.reasons == remote.features[c].reasons, c


def test_counting_gets_arrow_batches_sized_by_width_and_the_session_keeps_its_setting(spark):  # noqa: F811
    """`reference.arrow_batches`: 30 000 rows of 100 columns reach the worker as one batch (40 000 rows allowed), not
    Spark's three of 10 000; the session's own setting is back afterwards, also when the job fails."""
    from mlops_nb.reference import arrow_batches
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    df = spark.range(30_000).coalesce(1).selectExpr(*[f"cast(id as double) as f{i}" for i in range(100)])
    sizes = lambda: sorted(r["n"]
                           for r in df.mapInPandas(lambda it: (pd.DataFrame({"n": [len(b)]}) for b in it),
                                                   "n long").collect())
    with arrow_batches(spark, 100): assert sizes() == [30_000]
    assert spark.conf.get(key) == before
    with pytest.raises(ZeroDivisionError), arrow_batches(spark, 100): 1/0
    assert spark.conf.get(key) == before
