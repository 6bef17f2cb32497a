from pathlib import Path

import pytest

from tenantserve.verify.lmeval import MetricRow, compare_metrics, consolidated_args, dedicated_args, load_task
from tenantserve.verify.prompts import PromptsError

REPO = Path(__file__).resolve().parents[2]


def test_task_data_files_are_made_relative_to_the_task_file() -> None:
    task = load_task(REPO / "configs" / "verify" / "lm-eval" / "sql-select.yaml")
    data = Path(task["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data.is_file() and task["task"] == "tenantserve_sql_select"


def test_a_file_without_a_task_name_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("dataset_path: json\n")
    with pytest.raises(PromptsError, match="needs a 'task' name") as info:
        load_task(bad)
    assert info.value.exit_code == 2
    bad.write_text("task: [unclosed\n")
    with pytest.raises(PromptsError, match="cannot read"):
        load_task(bad)


def test_metrics_must_be_equal_and_present_on_both_sides() -> None:
    rows = compare_metrics({"exact_match": 1.0, "acc": 0.5}, {"exact_match": 1.0})
    assert rows == [MetricRow("acc", 0.5, rows[0].consolidated), MetricRow("exact_match", 1.0, 1.0)]
    assert not rows[0].passed and rows[1].passed
    assert not MetricRow("exact_match", 1.0, 0.8333).passed


def test_model_args_for_both_sides() -> None:
    assert dedicated_args(Path("/b"), Path("/a")) == {"pretrained": "/b", "dtype": "float32", "device": "cpu",
                                                      "peft": "/a"}
    assert "peft" not in dedicated_args(Path("/b"), None)
    args = consolidated_args("http://h:1", "sql", Path("/b"), "tok")
    assert args["base_url"] == "http://h:1/v1/completions" and args["header"] == {"Authorization": "Bearer tok"}
    assert "header" not in consolidated_args("http://h:1", "sql", Path("/b"), None)
