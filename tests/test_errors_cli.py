"""``mqlogging errors``: top error/warning groups by template, from files and Elasticsearch.

Elasticsearch is the noida-db stand-in (fixture ``elasticsearch``); the records are stored the
way the collector stores them (:class:`mqlogging.esbulk.BulkWriter`), in every schema.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from harness.brokers import NoidaES
from harness.helpers import unique_name
from mqlogging import JsonFormatter
from mqlogging.cli import errors as errors_cli
from mqlogging.cli import main
from mqlogging.esbulk import BulkWriter, IndexChooser, new_client
from mqlogging.formatting import SCHEMAS
from mqlogging.wire import read_meta


def _record(msg: str, args: tuple[Any, ...], level: int, created: float | None = None) -> Any:
    record = logging.LogRecord("jobs", level, "/srv/jobs.py", 7, msg, args, None)
    if created is not None:
        record.created = created
    return record


def _bodies(hosts: tuple[str, ...] = ("node1", "node2")) -> list[bytes]:
    """Five failures of one template on two hosts, a warning, an info, in every schema."""
    out = []
    for schema in SCHEMAS:
        for n, host in enumerate([*hosts, hosts[0], hosts[1], hosts[0]]):
            fmt = JsonFormatter(schema=schema, hostname=host, fmt=None)
            out.append(fmt.format_message(_record("job %d failed", (n,), logging.ERROR)).body)
        warn = _record("disk \x1b[2J%d%% full", (97,), logging.WARNING)
        out.append(JsonFormatter(schema=schema).format_message(warn).body)
        out.append(JsonFormatter(schema=schema).format_message(_record("ok", (), 20)).body)
    return out


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["errors", *args])
    return code, capsys.readouterr().out


# The flat schema writes python-json-logger's layout, which has no level: its records are
# not counted (they cannot be told from INFO). Four schemas, three with a level.
LEVELLED = [s for s in SCHEMAS if s != "flat"]


class TestFiles:
    def test_groups_by_template_with_counts_hosts_and_example(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Records of every schema group by template; counts, hosts and an example are right."""
        path = tmp_path / "records.jsonl"
        path.write_bytes(b"\n".join(_bodies()) + b"\n")
        code, out = _run(capsys, "--file", str(path), "--json")
        report = json.loads(out)
        assert code == 0
        top = report["groups"][0]
        assert (top["template"], top["count"], top["hosts"]) == (
            "job %d failed",
            5 * len(LEVELLED),
            2,
        )
        assert top["example"]["message"] == "job 4 failed"
        assert top["first_seen"] <= top["last_seen"]
        assert report["groups"][1]["count"] == len(LEVELLED)
        assert report["total"] == 6 * len(LEVELLED)

    def test_terminal_table_escapes_control_characters(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A message with an escape sequence is shown escaped, never sent raw to the terminal."""
        path = tmp_path / "records.jsonl"
        path.write_bytes(b"\n".join(_bodies()) + b"\n")
        code, out = _run(capsys, "--file", str(path))
        assert code == 0
        assert "\x1b" not in out
        assert "\\x1b[2J" in out
        assert "job %d failed" in out

    def test_a_cut_never_splits_an_escape(self) -> None:
        """Cutting a long line to the column width keeps whole escapes: a C1 CSI shown as
        ``\\x9b`` is kept whole or left out, never cut to ``\\x9`` (another character)."""
        for width in range(2, 12):
            shown = errors_cli._printable("ab\x9bcd\x1b[2J", width)
            assert len(shown) <= width
            body = shown.removesuffix("\u2026")
            assert body == "ab\\x9bcd\\x1b[2J"[: len(body)]
            assert not re.search(r"\\x[0-9a-f]?$", body), shown

    def test_first_and_last_seen_are_escaped_too(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A record time that parses as ISO-8601 (any single character may separate date and
        time, C1 CSI included) cannot put a control character on the terminal through the
        FIRST SEEN / LAST SEEN columns."""
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y-%m-%d") + "\x9b" + now.strftime("%H:%M:%S+00:00")
        doc = {"@timestamp": stamp, "log": {"level": "error"}, "message": "boom"}
        path = tmp_path / "records.jsonl"
        path.write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")
        code, out = _run(capsys, "--file", str(path), "--since", "1d")
        assert code == 0
        assert "boom" in out
        assert "\x9b" not in out

    def test_level_and_window_filter(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--level error`` drops warnings; records before ``--since`` are not counted; a
        record without a template groups by its message."""
        old = (datetime.now(timezone.utc) - timedelta(hours=3)).timestamp()
        fmt = JsonFormatter()
        bodies = [
            fmt.format_message(_record("old %s", ("x",), logging.ERROR, created=old)).body,
            fmt.format_message(_record("new %s", ("x",), logging.ERROR)).body,
            fmt.format_message(_record("warn", (), logging.WARNING)).body,
            json.dumps(
                {
                    "@timestamp": "2999-01-01T00:00:00Z",
                    "log": {"level": "error"},
                    "message": "foreign",
                }
            ).encode(),
        ]
        path = tmp_path / "r.jsonl"
        path.write_bytes(b"\n".join(bodies))
        code, out = _run(capsys, "--file", str(path), "--since", "1h", "--level", "error", "--json")
        assert code == 0
        groups = {g.get("template") or g.get("message"): g for g in json.loads(out)["groups"]}
        assert set(groups) == {"new %s", "foreign"}
        assert groups["foreign"]["grouped_by"] == "message"

    def test_usage_errors_are_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--es`` without ``--index`` and a bad ``--since`` exit 2 with one line."""
        assert main(["errors", "--es", "http://127.0.0.1:1"]) == 2
        assert main(["errors", "--file", "x", "--since", "yesterday"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2
        assert all(line.startswith("mqlogging: error:") for line in err)

    def test_credential_options_are_checked_in_one_line(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Credentials come as the ES sink takes them (API key or user + password, from a file
        or the environment); contradictions and missing variables are one-line errors, and a
        password never appears in the output."""
        monkeypatch.setenv("ERRORS_TEST_KEY", "k3y-s3cret")
        monkeypatch.delenv("ERRORS_TEST_MISSING", raising=False)
        es = ["errors", "--es", "http://u:hunter2@127.0.0.1:1", "--index", "x"]
        both = [*es, "--api-key-env", "ERRORS_TEST_KEY", "--username", "u",
                "--password-env", "ERRORS_TEST_KEY"]  # fmt: skip
        assert main(both) == 2
        assert main([*es, "--password-env", "ERRORS_TEST_KEY"]) == 2
        assert main([*es, "--api-key-env", "ERRORS_TEST_MISSING"]) == 2
        assert main([*es, "--api-key-env", "ERRORS_TEST_KEY"]) == 2  # nothing listens there
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 4
        assert all(line.startswith("mqlogging: error:") for line in err)
        assert "hunter2" not in captured.err + captured.out
        assert "k3y-s3cret" not in captured.err + captured.out


@dataclass
class _Doc:
    id: str
    doc: dict[str, Any]
    body: bytes

    def encoded(self) -> bytes:
        return self.body


class TestElasticsearch:
    def test_aggregations_over_every_schema(
        self, elasticsearch: NoidaES, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Stored as the collector stores them, the groups come out of one aggregation query
        (terms + cardinality + top_hits) with the same counts as the file source."""
        base = unique_name("errors-test")
        index = f"{base}-*"  # one index per schema: their layouts cannot share a mapping
        client = new_client([elasticsearch.url], request_timeout=30)
        for body in _bodies():
            doc = json.loads(body)
            meta = read_meta(doc)
            assert meta.id is not None
            assert meta.schema is not None
            chooser = IndexChooser(mode="index", index=f"{base}-{meta.schema}")
            writer = BulkWriter(client, chooser, max_bulk_bytes=1 << 20)
            [result] = writer.write([_Doc(meta.id, doc, body)])
            assert result.outcome.name == "DONE", result
        client.indices.refresh(index=index)
        client.close()
        code, out = _run(capsys, "--es", elasticsearch.url, "--index", index, "--json")
        assert code == 0
        report = json.loads(out)
        top = report["groups"][0]
        assert (top["template"], top["count"], top["hosts"]) == (
            "job %d failed",
            5 * len(LEVELLED),
            2,
        )
        assert top["example"]["message"] == "job 4 failed"
        assert top["first_seen"]
        assert top["first_seen"] <= top["last_seen"]
        assert report["total"] == 6 * len(LEVELLED)
        code, out = _run(capsys, "--es", elasticsearch.url, "--index", index, "--level", "error")
        assert "disk" not in out
        assert "job %d failed" in out
