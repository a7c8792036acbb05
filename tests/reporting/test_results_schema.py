"""The one results schema: old column names (``measure``, ``n``) read as the current ones (``metric``, ``n_units``)."""

import warnings

import numpy as np
import pandas as pd
import pytest

from src.reporting.multirun import merge_results
from src.reporting.results import (
    ANALYSIS_COLUMNS,
    COLUMNS,
    RESULT_COLUMNS,
    normalise_columns,
    read_results,
    write_results,
)

OLD = (  # an analysis table as written before the schema: quantity in 'measure', interval units in 'n'
    "backbone,analysis,layer,measure,value,ci_low,ci_high,n,unit\n"
    "tiny,faithfulness,1,aopc,0.25,0.1,0.4,7,utterance\n"
    "tiny,faithfulness,2,aopc,0.5,0.3,0.7,7,utterance\n"
)
NEW = (
    "backbone,analysis,layer,metric,value,ci_low,ci_high,unit,n_units\n"
    "tiny,faithfulness,1,aopc,0.75,0.6,0.9,utterance,9\n"
)


def test_one_column_list():
    assert "measure" not in COLUMNS and "n" not in COLUMNS
    assert set(RESULT_COLUMNS) <= set(COLUMNS) and set(ANALYSIS_COLUMNS) <= set(COLUMNS)
    assert [c for c in COLUMNS if c in RESULT_COLUMNS] == RESULT_COLUMNS  # the probing order is the schema's


def test_read_results_renames_old_columns(tmp_path):
    (tmp_path / "results.csv").write_text(OLD)
    df = read_results(tmp_path)
    assert list(df.columns) == ["backbone", "analysis", "layer", "metric", "value", "ci_low", "ci_high", "n_units",
                                "unit"]
    assert df["metric"].tolist() == ["aopc", "aopc"] and df["n_units"].tolist() == [7, 7]


def test_both_names_keep_the_current_and_fill_from_the_old():
    df = pd.DataFrame({"measure": ["a", "b"], "metric": [None, "c"], "unit": ["text", "text"],
                       "n": [3, 4], "n_units": [np.nan, 5.0]})
    out = normalise_columns(df)
    assert list(out.columns) == ["metric", "unit", "n_units"]
    assert out["metric"].tolist() == ["a", "c"] and out["n_units"].tolist() == [3, 5]


def test_n_without_unit_is_not_a_unit_count():
    df = pd.DataFrame({"x": [0.0], "n": [12]})  # e.g. a curve table: n counts curves
    assert normalise_columns(df) is df


def test_write_then_read_unchanged(tmp_path):
    rows = [{"backbone": "b", "analysis": "cka", "layer": 1, "metric": "cka", "value": 0.5, "ci_low": 0.4,
             "ci_high": 0.6, "unit": "text", "n_units": 6}]
    write_results(rows, tmp_path)
    df = read_results(tmp_path)
    assert df.to_dict("records") == rows


def test_merge_old_and_new_job_dirs(tmp_path):
    for job, text in (("0_old", OLD), ("1_new", NEW)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "results.csv").write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = merge_results(tmp_path, write=False, figures=False)
    assert "measure" not in df.columns and "n" not in df.columns
    got = sorted(zip(df["job"], df["layer"], df["metric"], df["value"], df["n_units"]))
    assert got == [("0_old", 1, "aopc", 0.25, 7), ("0_old", 2, "aopc", 0.5, 7), ("1_new", 1, "aopc", 0.75, 9)]


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_old_json_and_csv_read_alike(tmp_path, suffix):
    old = pd.read_csv(pd.io.common.StringIO(OLD))
    if suffix == "csv":
        (tmp_path / "results.csv").write_text(OLD)
    else:
        import json

        rows = old.to_dict("records")
        (tmp_path / "results.json").write_text(json.dumps({"meta": {}, "columns": list(old.columns), "rows": rows}))
    df = read_results(tmp_path / f"results.{suffix}")
    assert "metric" in df.columns and "n_units" in df.columns and "measure" not in df.columns


def test_wandb_read_table_of_an_old_run(tmp_path):
    """A results table logged to W&B before the schema reads with the current names."""
    import json

    from src.reporting.wandb_read import OfflineRun

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "t.table.json").write_text(json.dumps(
        {"columns": ["layer", "measure", "value", "unit", "n"], "data": [[1, "cka", 0.5, "text", 6]]}))
    run = OfflineRun(path=tmp_path, history=[{"results": {"_type": "table-file", "path": "t.table.json"}}])
    df = run.table("results")
    assert list(df.columns) == ["layer", "metric", "value", "unit", "n_units"]
    assert df.iloc[0].tolist() == [1, "cka", 0.5, "text", 6]
