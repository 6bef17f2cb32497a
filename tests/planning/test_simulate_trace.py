"""The JSON-lines trace format: round trip, seconds to steps, and one clear error per kind of bad line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tenantserve.cli import main
from tenantserve.cli.simulate import command
from tenantserve.planning.simulate import Request
from tenantserve.planning.trace import TraceError, Traffic, dump_trace, generate, load_trace


def test_round_trip_keeps_every_request(tmp_path: Path) -> None:
    requests = generate(Traffic(adapters=5, rate=0.5, tokens=20, min_tokens=5, base_share=0.2), 200, seed=4)
    assert any(r.adapter is None for r in requests) and len({r.output_tokens for r in requests}) > 1
    dump_trace(requests, tmp_path / "t.jsonl", 0.02)
    first = requests[0].arrival  # steps count from the earliest request
    assert load_trace(tmp_path / "t.jsonl", 0.02) == [replace(r, arrival=r.arrival - first) for r in requests]


def test_seconds_become_steps_from_the_earliest_request(tmp_path: Path) -> None:
    path = tmp_path / "prod.jsonl"
    path.write_text('# from the gateway log\n{"t": 101.0, "adapter": "sql", "prompt_tokens": 9, "output_tokens": 3}\n'
                    '\n{"t": 100.0, "prompt_tokens": 5, "output_tokens": 2}\n')
    assert load_trace(path, 0.25) == [Request(4, "sql", 9, 3), Request(0, None, 5, 2)]


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "not JSON"),
    ("[1, 2]", "expected an object"),
    ('{"adapter": "a", "prompt_tokens": 1, "output_tokens": 1}', "'t' must be a number of seconds >= 0, got None"),
    ('{"t": -1, "prompt_tokens": 1, "output_tokens": 1}', "'t' must be a number of seconds >= 0"),
    ('{"t": true, "prompt_tokens": 1, "output_tokens": 1}', "'t' must be a number"),
    ('{"t": 1, "adapter": 5, "prompt_tokens": 1, "output_tokens": 1}', "'adapter' must be a non-empty string"),
    ('{"t": 1, "adapter": "", "prompt_tokens": 1, "output_tokens": 1}', "'adapter' must be a non-empty string"),
    ('{"t": 1, "prompt_tokens": 0, "output_tokens": 1}', "'prompt_tokens' must be an integer >= 1, got 0"),
    ('{"t": 1, "prompt_tokens": 2, "output_tokens": 1.5}', "'output_tokens' must be an integer >= 1"),
    ('{"t": 1, "prompt_tokens": 2}', "'output_tokens' must be an integer >= 1, got None"),
])
def test_bad_lines_name_the_line_and_the_field(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": 0, "adapter": "a", "prompt_tokens": 1, "output_tokens": 1}\n' + line + "\n")
    with pytest.raises(TraceError, match="bad.jsonl:2: ") as info:
        load_trace(path, 0.01)
    assert message in str(info.value)


def test_empty_and_unreadable_traces(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("# nothing\n")
    with pytest.raises(TraceError, match="has no requests"):
        load_trace(tmp_path / "empty.jsonl", 0.01)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TraceError, match="cannot read the trace"):
        load_trace(tmp_path / "bin.jsonl", 0.01)


def test_cli_replays_a_trace_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "prod.jsonl"
    dump_trace([Request(i, f"a{i % 3}", 8, 16) for i in range(0, 400, 4)], path, 0.025)
    res = CliRunner().invoke(command, ["--trace", str(path), "--max-loras", "2"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "prod.jsonl" in res.output and "100" in res.output
    path.write_text('{"t": "soon"}\n')
    bad = CliRunner().invoke(main, ["simulate", "--trace", str(path)])
    assert bad.exit_code == 2 and "prod.jsonl:1: 't' must be a number of seconds >= 0, got 'soon'" in bad.output
    assert "Traceback" not in bad.output


def test_cli_records_generated_traces(tmp_path: Path) -> None:
    res = CliRunner().invoke(command, ["--adapters", "6", "--steps", "300", "--shape", "uniform", "--seed", "1",
                                       "--seed", "2", "--record", str(tmp_path)])
    assert res.exit_code == 0, res.output
    recorded = sorted(p.name for p in tmp_path.iterdir())
    assert recorded == ["uniform-1.jsonl", "uniform-2.jsonl"]
    assert load_trace(tmp_path / "uniform-1.jsonl", 0.025) != load_trace(tmp_path / "uniform-2.jsonl", 0.025)
