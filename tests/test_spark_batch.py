"""Batch scoring on Spark (`mlops-nb score --engine spark`) on the one shared local session: the numbers /score's
logic answers, the same output as the local engine, bad input named in one line, no output left by a failed job."""
import json
import numpy as np, pandas as pd
import pytest
from spark_fixtures import spark  # noqa: F401 (the shared session fixture)
from mlops_nb.batch import score_batch
from mlops_nb.core import DataError
from mlops_nb.examples.ottawa import generate_listings
from mlops_nb.serving import load_runtime, score

pytestmark = pytest.mark.xdist_group("spark")  # one worker, one JVM for every Spark test


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("spark-in")
    df = generate_listings(2022, 2500, seed=11)
    df.iloc[:1500].to_parquet(d/"a.parquet", row_group_size=500)
    df.iloc[1500:].to_parquet(d/"b.parquet")
    return d, df


def test_spark_engine_gives_the_numbers_of_score(spark, model_dir, data, tmp_path):  # noqa: F811
    d, df = data
    res = score_batch(model_dir, d/"*.parquet", tmp_path/"spark", engine="spark", spark=spark, batch_rows=400)
    assert (res.rows, res.files, res.engine, res.version) == (2500, 2, "spark", "1")
    got = pd.read_parquet(tmp_path/"spark").set_index("listing_id").loc[df["listing_id"]]
    assert (tmp_path/"spark"/"_SUCCESS").exists() and (tmp_path/"spark"/"_mlops_nb_batch.json").exists()
    rt = load_runtime(model_dir)
    raw = df[list(rt.schema)].assign(listing_date=df["listing_date"].dt.strftime("%Y-%m-%d"))
    want = score([{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                  for r in raw.iloc[:1000].to_dict("records")], rt)["predictions"]
    head = got.iloc[:1000]
    assert head["label"].tolist() == [a["label"] for a in want]
    assert np.abs(head["probability"].to_numpy() - [a["probability"] for a in want]).max() < 1e-6
    assert np.abs(got["probability_above_asking"].to_numpy() - rt.predict(raw.to_dict("records"))[:, 1]).max() < 1e-9
    assert set(got["model"]) == {"ottawa-housing-classifier"} and set(got["version"]) == {"1"}
    local = score_batch(model_dir, d/"*.parquet", tmp_path/"local", workers=1)
    assert local.rows == 2500
    loc = pd.read_parquet(tmp_path/"local").set_index("listing_id").loc[df["listing_id"]]
    pd.testing.assert_frame_equal(got, loc, check_exact=False, rtol=0, atol=1e-12)


def test_spark_bad_input_names_file_column_and_row(spark, model_dir, data, tmp_path):  # noqa: F811
    d, df = data
    bad = df.head(100).copy()
    bad.loc[77, "bedrooms"] = 99
    bad.to_parquet(tmp_path/"bad.parquet")
    with pytest.raises(DataError,
                       match=r"bad.parquet: column 'bedrooms' has values above its maximum 50, first at row 78: 99"):
        score_batch(model_dir, tmp_path/"bad.parquet", tmp_path/"out", engine="spark", spark=spark)
    df.head(10).drop(columns=["sqft"]).to_parquet(tmp_path/"nocol.parquet")
    with pytest.raises(DataError, match="nocol.parquet: missing required column"):
        score_batch(model_dir, tmp_path/"nocol.parquet", tmp_path/"out", engine="spark", spark=spark)
    assert not [f for f in tmp_path.iterdir() if "out" in f.name]  # the failed job left nothing


def test_cli_score_engine_spark_uses_the_active_session(spark, model_dir, data, tmp_path, capsys):  # noqa: F811
    from mlops_nb.cli import main
    d, df = data
    csv = tmp_path/"c.csv"
    df.head(300).to_csv(csv, index=False)
    assert main(["score", "--engine", "spark", "--model", str(model_dir), "--input", str(csv), "--output",
                 str(tmp_path/"o"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 300 and out["engine"] == "spark"
    assert pd.read_parquet(tmp_path/"o")["listing_id"].sort_values().tolist() == sorted(df["listing_id"].head(300))
