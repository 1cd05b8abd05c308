"""``mqlogging audit`` without a broker: the sequence-run set, the report over files and spool
directories, the time window, terminal safety and the exit statuses."""

from __future__ import annotations

import gzip
import itertools
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqlogging.audit import SeqRuns
from mqlogging.cli import main


def _doc(producer: str, seq: int, when: str = "2026-12-01T12:00:00.000000Z", **ns: Any) -> str:
    return json.dumps(
        {
            "@timestamp": when,
            "message": f"record {seq}",
            "mqlogging": {"schema": "ecs", "producer": producer, "seq": seq, **ns},
        }
    )


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


class TestSeqRuns:
    @given(
        st.lists(st.tuples(st.integers(1, 300), st.integers(0, 20)), max_size=80),
        st.sampled_from([2, 3, 1024]),
    )
    def test_matches_a_plain_set(self, inserts: list[tuple[int, int]], block: int) -> None:
        """Whatever the order of inserts, the runs hold exactly the numbers inserted, stay
        sorted, disjoint and non-adjacent, ``add`` returns how many were present already, and
        ``missing`` is the complement; tiny blocks make inserts split blocks and merges span
        several of them."""
        runs, model = SeqRuns(block=block), set()
        for first, length in inserts:
            numbers = set(range(first, first + length + 1))
            assert len(numbers & model) == runs.add(first, first + length)
            model |= numbers
        pairs = list(runs)
        assert all(a <= b for a, b in pairs)
        assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(pairs))
        assert model == {n for a, b in pairs for n in range(a, b + 1)}
        assert len(model) == runs.count()
        holes = {n for a, b in runs.missing(1, 330) for n in range(a, b + 1)}
        assert set(range(1, 331)) - model == holes
        assert (min(model, default=None), max(model, default=None)) == (
            runs.lowest,
            runs.highest,
        )
        assert len(pairs) == len(runs)

    def test_a_million_out_of_order_inserts_stay_fast(self) -> None:
        """A million numbers added odd-first-then-even (records of a roundrobin handler read
        from its two sinks one after the other: half a million runs at the turn) end as one
        run, with no duplicate, well within a generous bound: each insert is O(log runs), where
        splicing one flat list per insert took over two minutes."""
        runs, n = SeqRuns(), 1_000_000
        started = time.monotonic()
        present = sum(runs.add(s) for s in itertools.chain(range(1, n + 1, 2), range(2, n + 1, 2)))
        elapsed = time.monotonic() - started
        assert (list(runs), present) == ([(1, n)], 0)
        assert elapsed < 40, f"{elapsed:.1f}s for {n} out-of-order inserts"

    def test_a_contiguous_million_is_one_run(self) -> None:
        """In-order numbers extend the last run: memory does not grow with the record count."""
        runs = SeqRuns()
        for n in range(1, 1_000_001):
            runs.add(n)
        assert list(runs) == [(1, 1_000_000)]


class TestFileAudit:
    def test_gaps_drops_duplicates_per_producer(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two producers over two files (one gzip-rotated): a marker explains one range, an
        unexplained gap remains, a duplicate is counted; exit 1 because of the gap."""
        rotated = tmp_path / "sink.jsonl.1.gz"
        with gzip.open(rotated, "wt") as f:
            f.writelines(_doc("a", s) + "\n" for s in range(1, 4))
        marker = [{"producer": "a", "first": 4, "last": 6, "reason": "overflow"}]
        _write(
            tmp_path / "sink.jsonl",
            [_doc("a", s) for s in (7, 8, 8, 11)]
            + [_doc("a", 12, dropped=marker)]
            + [_doc("b", s) for s in range(1, 6)]
            + ["not json", json.dumps({"message": "from elsewhere"})],
        )
        code, report = _audit(capsys, "--file", str(tmp_path / "sink.jsonl*"))
        assert code == 1
        a, b = report["producers"]
        assert (
            a["producer"], a["records"], a["markers"], a["gaps"], a["dropped"],
            a["duplicates"], a["duplicate_seqs"],
        ) == ("a", 8, 1, [[9, 10]], 3, 1, [[8, 8]])  # fmt: skip
        assert a["dropped_ranges"] == [{"first": 4, "last": 6, "reason": "overflow"}]
        assert (b["producer"], b["records"], b["gaps"]) == ("b", 5, [])
        assert (report["totals"]["unreadable"], report["totals"]["unstamped"]) == (1, 1)

    def test_first_and_last_time_are_moments_not_strings(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A producer's first and last time compare as moments (``+02:00`` against ``Z``), and a
        time that does not parse ("zzz", which sorts after every digit) is never shown as one."""
        _write(
            tmp_path / "sink.jsonl",
            [
                _doc("a", 1, "2026-12-01T12:00:00.000000Z"),
                _doc("a", 2, "2026-12-01T13:30:00.000000+02:00"),  # 11:30 UTC: the first
                _doc("a", 3, "zzz"),
                _doc("a", 4, "2026-12-01T12:05:00.000000Z"),
            ],
        )
        code, report = _audit(capsys, "--file", str(tmp_path / "sink.jsonl"))
        assert code == 0
        (a,) = report["producers"]
        assert (a["first_time"], a["last_time"]) == (
            "2026-12-01T13:30:00.000000+02:00",
            "2026-12-01T12:05:00.000000Z",
        )

    def test_two_roundrobin_sinks_read_one_after_the_other(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Records of a roundrobin handler split over two sink files (odd seqs in one, even in
        the other) and audited together are all counted, once: 20,000 records, no gap, no
        duplicate; one line removed from the middle of the even file is named as the gap."""
        n = 20_000
        _write(tmp_path / "sink-a.jsonl", [_doc("a", s) for s in range(1, n + 1, 2)])
        even = [_doc("a", s) for s in range(2, n + 1, 2) if s != 10_000]
        _write(tmp_path / "sink-b.jsonl", [*even, _doc("a", n)])
        code, report = _audit(capsys, "--file", str(tmp_path / "sink-*.jsonl"))
        assert code == 1
        [a] = report["producers"]
        assert (a["records"], a["first_seq"], a["last_seq"], a["gaps"], a["duplicates"]) == (
            n,
            1,
            n,
            [[10_000, 10_000]],
            1,
        )
        assert a["duplicate_seqs"] == [[n, n]]

    def test_window_counts_from_the_seq_after_the_last_before_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With ``--since``, records before it are outside the window and the sequence is
        checked from the seq after the last one before it (the earlier numbers are not
        gaps)."""
        lines = [_doc("a", s, f"2026-12-01T12:00:{s:02d}.000000Z") for s in range(1, 31)]
        path = _write(tmp_path / "sink.jsonl", lines)
        code, report = _audit(
            capsys, "--file", str(path), "--since", "2026-12-01T12:00:10Z",
            "--until", "2026-12-01T12:00:20+00:00",
        )  # fmt: skip
        assert code == 0
        [a] = report["producers"]
        assert (a["records"], a["first_seq"], a["last_seq"], a["gaps"]) == (10, 10, 19, [])
        assert (a["start"], a["checked_from"]) == ("after seq 9", 10)
        assert report["totals"]["outside_window"] == 20

    def test_since_sees_records_lost_at_the_windows_start(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Seqs 10..12 of a producer are missing from the sink and ``--since`` falls among
        them: the check starts after seq 9 (the last before the window), so the three are
        missing (exit 1); they used to be outside the check (exit 0). A second producer with
        nothing before the window is checked from its first seq there, and says so."""
        lines = [
            _doc("a", s, f"2026-12-01T12:00:{s:02d}.000000Z")
            for s in range(1, 31)
            if s not in (10, 11, 12)
        ] + [_doc("b", s, f"2026-12-01T12:00:{s:02d}.000000Z") for s in range(20, 31)]
        path = _write(tmp_path / "sink.jsonl", lines)
        code, report = _audit(capsys, "--file", str(path), "--since", "2026-12-01T12:00:11Z")
        assert code == 1
        a, b = report["producers"]
        assert (a["records"], a["start"], a["gaps"], a["missing"]) == (
            18,
            "after seq 9",
            [[10, 12]],
            3,
        )
        assert (b["records"], b["start"], b["checked_from"], b["gaps"]) == (
            11,
            "first in window",
            20,
            [],
        )
        assert report["totals"]["missing"] == 3

    @pytest.mark.parametrize("since", ["2020-01-01T00:00:00Z", "1h"])
    def test_since_before_everything_checks_from_seq_1(
        self, since: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A producer's seq 1..10 are missing from the sink and nothing in it precedes
        ``--since`` (a date long ago, or an hour ago for records made now): the window covers
        the whole sink, so the check starts at seq 1 as without ``--since``, and the ten are
        missing (exit 1); the audit used to start at seq 11 and say OK."""
        now = datetime.now(timezone.utc).isoformat()
        path = _write(tmp_path / "sink.jsonl", [_doc("a", s, now) for s in range(11, 101)])
        code, report = _audit(capsys, "--file", str(path), "--since", since)
        assert code == 1
        [a] = report["producers"]
        assert (a["records"], a["checked_from"], a["gaps"], a["missing"]) == (90, 1, [[1, 10]], 10)
        assert a["start"] == "seq 1 (nothing precedes the window)"
        capsys.readouterr()
        assert main(["audit", "--file", str(path), "--since", since]) == 1
        assert "checked     from seq 1: nothing precedes the window" in capsys.readouterr().out

    def test_text_output_escapes_control_characters(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A producer name carrying terminal escapes is printed escaped, never raw."""
        evil = "host\x1b[2J\x07:1:ab"
        path = _write(tmp_path / "sink.jsonl", [_doc(evil, 1), _doc(evil, 3)])
        capsys.readouterr()
        assert main(["audit", "--file", str(path)]) == 1
        out = capsys.readouterr().out
        assert "\x1b" not in out
        assert "\x07" not in out
        assert "host\\x1b[2J\\x07:1:ab" in out
        assert "gaps        1 missing: 2" in out

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--file", "/nonexistent/x.jsonl"], "no such file"),
            (["--es", "http://127.0.0.1:9"], "--es needs --index"),
            (["--file", "x", "--since", "yesterday"], "--since 'yesterday'"),
            (["--spool", "/nonexistent/spool"], "not a directory"),
        ],
    )
    def test_usage_errors_exit_2(
        self, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad source or option is one line on stderr and exit status 2."""
        assert main(["audit", *args]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert len(err.strip().splitlines()) == 1


class TestSpoolAudit:
    def test_unconfirmed_records_and_unattributed_drops(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A spool directory is read without claiming anything: its records are audited, a
        torn last line is skipped, and the journal's torn/corrupt drops are reported as
        unattributed."""
        from mqlogging.spool import Spool

        spool_dir = tmp_path / "spool"
        with Spool(spool_dir) as spool:
            spool.append([_doc("a", s).encode() for s in range(1, 6)])
        (spool_dir / "dropped.log").write_text(
            '{"time":1,"reason":"torn","records":1,"segment":"x","pid":1}\n'
        )
        [segment] = list(spool_dir.glob("*.jsonl"))
        with segment.open("a") as f:
            f.write(_doc("a", 6)[:20])  # torn: no newline
        code, report = _audit(capsys, "--spool", str(spool_dir))
        assert code == 0
        [a] = report["producers"]
        assert (a["records"], a["gaps"]) == (5, [])
        assert report["totals"]["unattributed_drops"] == {"torn": 1}
        assert sorted(p.name for p in spool_dir.iterdir()) == sorted([segment.name, "dropped.log"])

    def test_a_per_endpoint_spool_root_is_refused_with_its_lanes(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The root of a ``strategy="all"`` spool (one spool per endpoint below it, each with a
        copy of every record) is not audited as one: exit 2 naming the lanes to audit."""
        from mqlogging.spool import Spool

        for lane in ("amqp-a", "stomp-b"):
            with Spool(tmp_path / lane) as spool:
                spool.append([_doc("a", 1).encode()])
        assert main(["audit", "--spool", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "amqp-a" in err
        assert "stomp-b" in err


def _letter(body: bytes | str, reason: str = "nested too deeply", **extra: Any) -> str:
    """A dead letter as the collector writes it (:func:`mqlogging.deadletters.envelope`)."""
    from mqlogging.deadletters import envelope

    raw = body.encode() if isinstance(body, str) else body
    return json.dumps(
        envelope(raw, reason=reason, stage="decode", source="amqp://h/", record_id="x", extra=extra)
    )


class TestDeadLetters:
    def test_kinds_of_dead_letter_explain_their_seqs(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every kind of dead letter explains the seqs of its records: an envelope of one
        record, a packed message (JSON lines, gzip as its header says), a bare record of ours
        (a broker's dead-letter queue), a dead-lettered marker (its drops stay announced) and
        an envelope around an envelope (a dead letter replayed and dead-lettered again);
        an undecodable original and an envelope without one count as unattributed. The
        reasons are counted per producer, most frequent first."""
        sink = _write(tmp_path / "sink.jsonl", [_doc("a", s) for s in (1, 2, 9, 12, 14)])
        packed = gzip.compress(f"{_doc('a', 4)}\n{_doc('a', 5)}\n".encode())
        marker = _doc("a", 11, dropped=[{"producer": "a", "first": 10, "last": 10, "reason": "x"}])
        letters = _write(
            tmp_path / "dead.jsonl",
            [
                _letter(_doc("a", 3)),
                _letter(packed, "too large", headers={"content-encoding": "gzip"}),
                _doc("a", 6),
                _letter(_doc("a", 7) + "\n" + _doc("a", 8)),
                _letter(marker, "refused by the sink"),
                _letter(_letter(_doc("a", 13)), "replayed, then refused again"),
                _letter(b"\xff{not json"),
                json.dumps({"reason": "no original"}),
            ],
        )
        code, report = _audit(capsys, "--file", str(sink), "--dead-letters", str(letters))
        [a] = report["producers"]
        assert (code, a["gaps"], a["missing"]) == (0, [], 0)
        assert (a["dead_lettered"], a["dead_lettered_ranges"]) == (8, [[3, 8], [11, 11], [13, 13]])
        assert a["dropped"] == 1
        assert [(r["reason"], r["count"]) for r in a["dead_letter_reasons"]] == [
            ("nested too deeply", 3),
            ("too large", 2),
            ("dead-lettered by the broker", 1),
            ("refused by the sink", 1),
            ("replayed, then refused again", 1),
        ]
        totals = report["totals"]
        assert (totals["dead_letters"], totals["dead_lettered_unattributed"]) == (8, 2)

    def test_stored_copy_wins_and_unexplained_gaps_remain(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A seq both stored and dead-lettered (one copy of a redelivered record refused) counts
        as stored, not dead-lettered; a seq in neither is still a gap (exit 1), also one
        between the last stored record and a later dead-lettered one."""
        sink = _write(tmp_path / "sink.jsonl", [_doc("a", s) for s in (1, 2, 3)])
        letters = _write(tmp_path / "dead.jsonl", [_letter(_doc("a", s)) for s in (3, 4, 7)])
        code, report = _audit(capsys, "--file", str(sink), "--dead-letters", str(letters))
        [a] = report["producers"]
        assert (code, a["gaps"], a["dead_lettered"]) == (1, [[5, 6]], 2)
        assert (a["records"], a["duplicates"]) == (3, 0)

    def test_until_does_not_stretch_the_check_to_later_dead_letters(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With ``--until``, the records after it are not read, so a dead letter after them
        must not make their seqs gaps: the check stops at the last stored seq in the window."""
        late = "2026-12-01T13:00:00.000000Z"
        sink = _write(
            tmp_path / "sink.jsonl", [_doc("a", 1), _doc("a", 2), _doc("a", 3, when=late)]
        )
        letters = _write(tmp_path / "dead.jsonl", [_letter(_doc("a", 5, when=late))])
        args = ["--file", str(sink), "--dead-letters", str(letters)]
        code, report = _audit(capsys, *args, "--until", "2026-12-01T12:30:00Z")
        assert (code, report["producers"][0]["gaps"]) == (0, [])
        code, report = _audit(capsys, *args)
        assert (code, report["producers"][0]["gaps"]) == (1, [[4, 4]])

    def test_a_missing_source_is_a_usage_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A ``--dead-letters`` path that names nothing exits 2 with a line naming the option."""
        sink = _write(tmp_path / "sink.jsonl", [_doc("a", 1)])
        code = main(["audit", "--file", str(sink), "--dead-letters", str(tmp_path / "nope")])
        assert code == 2
        assert "--dead-letters" in capsys.readouterr().err


class TestMoments:
    @pytest.mark.parametrize(
        ("text", "seconds_ago"), [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800)]
    )
    def test_relative(self, text: str, seconds_ago: int) -> None:
        """``--since 1h`` means an hour before now."""
        from datetime import datetime, timezone

        from mqlogging.audit import parse_moment

        now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
        assert seconds_ago == (now - parse_moment(text, now=now)).total_seconds()

    def test_iso_without_offset_is_utc(self) -> None:
        """An ISO-8601 time without an offset is UTC, like the records' own times."""
        from datetime import datetime, timezone

        from mqlogging.audit import parse_moment

        expected = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
        assert expected == parse_moment("2026-12-01T12:00:00")
        assert expected == parse_moment("2026-12-01T13:00:00+01:00")
