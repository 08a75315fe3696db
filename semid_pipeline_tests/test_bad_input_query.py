"""Issue 17, class 1: the query path is read-only in fact. Each attack is refused (or fails) with one
line, and every table file stays byte-identical."""

import subprocess
import sys

import pandas as pd
import pytest

from semid_pipeline import query as query_cli
from semid_pipeline.core import storage


@pytest.fixture()
def data_dir(tmp_path):
    d = tmp_path / "data"
    storage.write_table(d, "sid_versions", "demo", pd.DataFrame({"item_id": ["a", "b", "c"], "sid_str": ["1-2", "1-3", "2-1"]}))
    storage.write_table(d, "items", "demo", pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["x", "y", "z"]}))
    return d


def _snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted((d / "tables").rglob("*")) if p.is_file()}


def _attacks(d, tmp_path):
    sv = storage.table_path(d, "sid_versions", "demo")
    it = storage.table_path(d, "items", "demo")
    return [
        (f"copy (select * from sid_versions where false) to '{sv}' (format parquet)", "COPY"),
        (f"COPY (select 1 as item_id) TO '{it}' (FORMAT PARQUET)", "COPY"),
        (f"copy items to '{tmp_path}/leak.csv'", "COPY"),
        ("select * from read_text('/etc/passwd')", "/etc/passwd"),
        ("select * from read_csv('/etc/passwd')", "/etc/passwd"),
        (f"select * from read_text('{d}/tables/../../outside.txt')", "outside.txt"),
        (f"attach '{tmp_path}/x.duckdb' as x (READ_WRITE)", "ATTACH"),
        (f"attach '{storage.duckdb_path(d)}' as cat", "ATTACH"),
        ("set enable_external_access = true", "SET"),
        ("install httpfs", "install httpfs"),
        ("load httpfs", "LOAD"),
        (f"export database '{tmp_path}/dump'", "EXPORT"),
        ("create table t as select 1", "CREATE"),
        ("select 1; drop view items", "DROP"),
        (f"explain analyze copy items to '{tmp_path}/leak2.csv'", "EXPLAIN"),
        ("pragma enable_profiling", "PRAGMA"),
        ("select * from 'https://example.com/x.parquet'", "https://example.com/x.parquet"),
    ]


def test_every_attack_is_refused_and_tables_are_unchanged(data_dir, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    before = _snapshot(data_dir)
    for sql, named in _attacks(data_dir, tmp_path):
        with pytest.raises(storage.QueryError) as err:
            storage.query(data_dir, sql)
        message = str(err.value)
        assert named in message, (sql, message)
        assert "\n" not in message, (sql, message)
        assert "secret" not in message and "root:" not in message
    assert _snapshot(data_dir) == before
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "leak2.csv").exists()
    assert not (tmp_path / "x.duckdb").exists() and not (tmp_path / "dump").exists()
    assert storage.query(data_dir, "select count(*) n from sid_versions")["n"].item() == 3


def test_selects_still_work(data_dir):
    q = storage.query(data_dir, "with x as (select * from items where dataset = 'demo') select title from x order by item_id")
    assert q["title"].tolist() == ["x", "y", "z"]
    assert set(storage.query(data_dir, "show tables")["name"]) == {"items", "sid_versions"}
    assert storage.query(data_dir, "select 1 as a; select 2 as b")["b"].tolist() == [2]


@pytest.mark.parametrize(
    "sql, named",
    [
        ("selec * from items", "syntax error"),
        ("select * from itemz", "itemz"),
        ("select nope from items", "nope"),
        ("", "empty query"),
    ],
)
def test_bad_sql_is_one_line_no_traceback_nonzero_exit(data_dir, capsys, sql, named):
    rc = query_cli.main([sql, "--data-dir", str(data_dir)])
    out = capsys.readouterr()
    assert rc == 2
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], out.err
    assert "Traceback" not in out.err


def test_missing_data_dir_is_one_line(tmp_path, capsys):
    rc = query_cli.main(["select 1", "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nowhere" in err and "no tables" in err


def test_cli_works_while_a_writer_holds_the_duckdb_lock(data_dir):
    """A DuckDB file locked by a writer used to give a traceback ending 'Could not set lock'."""
    storage.refresh_views(data_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
         str(storage.duckdb_path(data_dir))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = subprocess.run(
            [sys.executable, "-m", "semid_pipeline.query", "select count(*) as n from items", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert "3" in res.stdout and "Traceback" not in res.stderr
        bad = subprocess.run(
            [sys.executable, "-m", "semid_pipeline.query", f"copy items to '{data_dir}/x.csv'", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=120,
        )
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "COPY" in bad.stderr
    finally:
        holder.kill()
        holder.wait()
