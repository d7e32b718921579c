"""One Spark session for every Spark test (`local[2]`, about 10 s to start): import the `spark` fixture from here.

Skipped, saying why, where pyspark or Java is missing (`pip install -e '.[spark]'`; Java 17: scripts/setup installs
it)."""
import os, shutil, sys
import pytest


def spark_missing():
    "Why Spark tests cannot run here, or None."
    try: import pyspark  # noqa: F401
    except ImportError: return "pyspark is not installed: pip install -e '.[spark]'"
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        return "Java is not installed: run scripts/setup as root (Debian's openjdk-17-jre-headless)"
    return None


@pytest.fixture(scope="session")
def spark():
    "The shared local Spark session (mlops_nb's own settings: workers on this Python, UTC)."
    why = spark_missing()
    if why and os.environ.get("CI"): pytest.fail(f"Spark cannot run here under CI: {why}")  # CI installs both
    if why: pytest.skip(why)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from mlops_nb.drift_spark import spark_session
    s = spark_session("local[2]")
    s.conf.set("spark.sql.shuffle.partitions", "4")  # small data: a few tasks, not 200
    yield s
