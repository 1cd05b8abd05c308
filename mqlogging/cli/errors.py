"""``mqlogging errors``: the top error and warning groups of a time window.

The "what broke in the last hour" view: records at WARNING and above (``--level error``: ERROR
and above) grouped by their message *template* (``"job %d failed"``, kept by the formatter
beside the formatted message, see :class:`mqlogging.JsonFormatter`), or by their message when
they have none (records of other producers, dict messages), with counts, first and last seen,
the number of hosts affected and the most recent example.

Sources:

- ``--es URL --index PATTERN``: one search with aggregations, whatever the schema of each
  record (``ecs``, ``logstash``, ``flat``, ``otel``): a ``terms`` aggregation on each schema's
  template field (and, for records without one, on its message), each bucket with a
  ``cardinality`` of the host field and two ``top_hits`` (oldest: first seen; newest: last seen
  and the example). First/last come from ``top_hits`` sorted on ``@timestamp``, not from
  ``min``/``max``: the test suite's Elasticsearch stand-in (noida-db) answers ``min``/``max``
  on a date with ``null``, and the sorted hit is exact on both. Keyword fields are found in
  the index mapping (a ``keyword`` field, else its ``.keyword`` sub-field); a template or
  message longer than the sub-field's ``ignore_above`` (256 by default; the index template of
  :mod:`mqlogging.esbulk` maps templates as keywords up to 8191) is counted under ``other``.
- ``--file PATH...``: JSON-lines files such as the collector's file sink (globs, ``.gz``),
  read once, one line at a time; memory is O(groups).

Terminal text escapes control characters, so a hostile message cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Final

from ..audit import Window, expand_paths, file_lines, parse_moment
from ..errors import ConfigurationError, SinkError
from ..esbulk import import_client, new_client
from ..tail import Record, normalise

__all__ = [
    "Group",
    "Report",
    "add_arguments",
    "errors_from_es",
    "errors_from_files",
    "print_report",
    "run_command",
]

_WARNING: Final = 30
_ERROR: Final = 40
_TIME_FIELD: Final = "@timestamp"  # every record in Elasticsearch has it (mqlogging.esbulk)

# What each schema calls the fields grouped and counted here (see mqlogging.formatting).
_TEMPLATE_FIELDS: Final = ("log.template", "message_template", "attributes.log.record.template")
_MESSAGE_FIELDS: Final = ("message", "body")
_HOST_FIELDS: Final = ("host.hostname", "source_host", "resource.host.name")
# Level filters per schema: (field, values at WARNING and above, values at ERROR and above).
_LEVEL_TERMS: Final = (
    (
        "log.level",
        ("warning", "warn", "error", "critical", "fatal"),
        ("error", "critical", "fatal"),
    ),
    (
        "levelname",
        ("WARNING", "WARN", "ERROR", "CRITICAL", "FATAL"),
        ("ERROR", "CRITICAL", "FATAL"),
    ),
)
_SEVERITY_FIELD: Final = "severityNumber"  # otel: WARN is 13..16, ERROR 17 and above
_SEVERITY_FROM: Final = {_WARNING: 13, _ERROR: 17}


@dataclass(slots=True)
class Group:
    """Records sharing one template (or message, when they have no template)."""

    key: str
    by: str  # "template" or "message"
    count: int = 0
    first: str = ""
    last: str = ""
    hosts: int = 0
    example: dict[str, str] = field(default_factory=dict)
    host_names: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        return {
            self.by: self.key,
            "grouped_by": self.by,
            "count": self.count,
            "first_seen": self.first,
            "last_seen": self.last,
            "hosts": self.hosts,
            "example": self.example,
        }


@dataclass(slots=True)
class Report:
    """The groups of a window, most frequent first; ``other`` counts records in no group shown."""

    source: str
    since: str | None
    until: str | None
    min_level: str
    total: int = 0
    other: int = 0
    groups: list[Group] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "since": self.since,
            "until": self.until,
            "min_level": self.min_level,
            "total": self.total,
            "other": self.other,
            "groups": [g.as_json() for g in self.groups],
        }


def _example(rec: Record) -> dict[str, str]:
    return {
        "time": rec.time,
        "level": rec.level,
        "logger": rec.logger,
        "host": rec.host,
        "message": rec.message,
    }


def _top(groups: Iterable[Group], top: int, report: Report) -> None:
    """Keep the ``top`` largest groups in ``report`` (ties: most recent first)."""
    ordered = sorted(groups, key=lambda g: g.last, reverse=True)
    ordered.sort(key=lambda g: g.count, reverse=True)  # stable: equal counts stay newest first
    report.groups = ordered[:top]
    report.other = report.total - sum(g.count for g in report.groups)


# -- files ----------------------------------------------------------------------------------


def _lines(patterns: Sequence[str]) -> Iterator[bytes]:
    return file_lines(expand_paths(patterns))


def errors_from_files(
    patterns: Sequence[str], window: Window, *, min_level: int = _WARNING, top: int = 10
) -> Report:
    """Group the records of JSON-lines files (any schema: :func:`mqlogging.tail.normalise`)."""
    report = _new_report(" ".join(patterns), window, min_level)
    groups: dict[str, Group] = {}
    for line in _lines(patterns):
        rec = normalise(line.rstrip(b"\n"))
        if rec.levelno is None or rec.levelno < min_level or not window.contains(rec.time):
            continue
        report.total += 1
        key, by = (rec.template, "template") if rec.template else (rec.message, "message")
        group = groups.get(by + "\0" + key)
        if group is None:
            group = groups[by + "\0" + key] = Group(key, by, first=rec.time, last=rec.time)
        group.count += 1
        group.first = min(group.first, rec.time)
        if rec.time >= group.last:
            group.last = rec.time
            group.example = _example(rec)
        if rec.host:
            group.host_names.add(rec.host)
        group.hosts = len(group.host_names)
    _top(groups.values(), top, report)
    return report


def _new_report(source: str, window: Window, min_level: int) -> Report:
    return Report(
        source=source,
        since=window.since.isoformat() if window.since else None,
        until=window.until.isoformat() if window.until else None,
        min_level="ERROR" if min_level >= _ERROR else "WARNING",
    )


# -- Elasticsearch --------------------------------------------------------------------------


def _mapping_type(props: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    """The mapping of the dotted field ``path`` in an index's ``properties``, if mapped."""
    node: Any = {"properties": props}
    for part in path.split("."):
        node = node.get("properties", {}).get(part) if isinstance(node, Mapping) else None
        if node is None:
            return None
    return node if isinstance(node, Mapping) else None


def _keyword_fields(es: Any, index: str, paths: Iterable[str]) -> dict[str, str]:
    """For each path some index maps: itself when a keyword, else its ``.keyword`` sub-field."""
    found: dict[str, str] = {}
    for body in dict(es.indices.get_mapping(index=index)).values():
        props = body.get("mappings", {}).get("properties", {})
        for path in paths:
            mapping = _mapping_type(props, path)
            if mapping is None or path in found:
                continue
            if mapping.get("type") == "keyword":
                found[path] = path
            elif "keyword" in mapping.get("fields", {}):
                found[path] = f"{path}.keyword"
            elif mapping.get("type") in ("long", "integer", "short", "byte"):
                found[path] = path
    return found


def _level_query(keywords: Mapping[str, str], min_level: int) -> dict[str, Any]:
    should: list[dict[str, Any]] = []
    for path, warning, error in _LEVEL_TERMS:
        if path in keywords:
            should.append(
                {"terms": {keywords[path]: list(error if min_level >= _ERROR else warning)}}
            )
    should.append({"range": {_SEVERITY_FIELD: {"gte": _SEVERITY_FROM[min(min_level, _ERROR)]}}})
    return {"bool": {"should": should, "minimum_should_match": 1}}


def _bucket_aggs(keywords: Mapping[str, str]) -> dict[str, Any]:
    aggs: dict[str, Any] = {
        "first": {
            "top_hits": {"size": 1, "sort": [{_TIME_FIELD: "asc"}], "_source": [_TIME_FIELD]}
        },
        "last": {"top_hits": {"size": 1, "sort": [{_TIME_FIELD: "desc"}]}},
    }
    for i, path in enumerate(p for p in _HOST_FIELDS if p in keywords):
        aggs[f"hosts{i}"] = {"cardinality": {"field": keywords[path]}}
    return aggs


def _search_body(
    keywords: Mapping[str, str], window: Window, min_level: int, top: int
) -> dict[str, Any]:
    """The query and aggregations: a terms aggregation per template field, and per message
    field over the records that have no template."""
    time_range: dict[str, str] = {}
    if window.since is not None:
        time_range["gte"] = window.since.isoformat()
    if window.until is not None:
        time_range["lt"] = window.until.isoformat()
    filters: list[dict[str, Any]] = [_level_query(keywords, min_level)]
    if time_range:
        filters.append({"range": {_TIME_FIELD: time_range}})
    sub = _bucket_aggs(keywords)
    aggs: dict[str, Any] = {}
    templates = [keywords[p] for p in _TEMPLATE_FIELDS if p in keywords]
    for i, name in enumerate(templates):
        aggs[f"template{i}"] = {"terms": {"field": name, "size": top}, "aggs": sub}
    no_template = {"bool": {"must_not": [{"exists": {"field": t}} for t in templates]}}
    for i, name in enumerate(keywords[p] for p in _MESSAGE_FIELDS if p in keywords):
        aggs[f"message{i}"] = {
            "filter": no_template,
            "aggs": {"groups": {"terms": {"field": name, "size": top}, "aggs": sub}},
        }
    return {"query": {"bool": {"filter": filters}}, "aggs": aggs}


def _hit_time(bucket: Mapping[str, Any], name: str) -> tuple[str, Mapping[str, Any]]:
    hits = bucket.get(name, {}).get("hits", {}).get("hits", [])
    source = hits[0].get("_source", {}) if hits else {}
    value = source.get(_TIME_FIELD) if isinstance(source, Mapping) else None
    return (value if isinstance(value, str) else ""), source


def _group_from_bucket(bucket: Mapping[str, Any], by: str) -> Group:
    first, _ = _hit_time(bucket, "first")
    last, source = _hit_time(bucket, "last")
    hosts = sum(
        int(v.get("value") or 0)
        for k, v in bucket.items()
        if k.startswith("hosts") and isinstance(v, Mapping)
    )
    example = _example(normalise(json.dumps(source).encode())) if source else {}
    return Group(
        str(bucket.get("key")),
        by,
        count=int(bucket.get("doc_count", 0)),
        first=first,
        last=last,
        hosts=hosts,
        example=example,
    )


def _merge(groups: dict[str, Group], group: Group) -> None:
    """Add a bucket to the group of the same key (one template written by several schemas)."""
    key = group.by + "\0" + group.key
    known = groups.get(key)
    if known is None:
        groups[key] = group
        return
    known.count += group.count
    known.first = min(known.first, group.first) if known.first else group.first
    if group.last > known.last:
        known.last, known.example = group.last, group.example
    known.hosts = max(known.hosts, group.hosts)  # at least; exact within one schema


def _es_options(args: argparse.Namespace) -> dict[str, Any]:
    """Client options as the collector's Elasticsearch sink takes them (secrets from files or
    the environment, never from the command line)."""
    options: dict[str, Any] = {"request_timeout": 60}
    api_key = _secret(args.api_key_file, args.api_key_env, "--api-key")
    password = _secret(args.password_file, args.password_env, "--password")
    if api_key and (args.username or password):
        msg = "give either --api-key-file/--api-key-env or --username with a password, not both"
        raise ConfigurationError(msg)
    if (args.username is None) != (password is None):
        msg = "--username needs --password-file or --password-env (and they need --username)"
        raise ConfigurationError(msg)
    if api_key:
        options["api_key"] = api_key
    if args.username and password:
        options["basic_auth"] = (args.username, password)
    if args.ca_certs:
        options["ca_certs"] = args.ca_certs
    if args.no_verify:
        options["verify_certs"] = False
    return options


def _secret(path: str | None, env: str | None, option: str) -> str | None:
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            msg = f"{option}-file {path!r}: {exc.strerror or exc}"
            raise ConfigurationError(msg) from exc
    if env:
        value = os.environ.get(env)
        if not value:
            msg = f"{option}-env {env}: the environment variable is not set"
            raise ConfigurationError(msg)
        return value
    return None


def errors_from_es(
    url: str,
    index: str,
    window: Window,
    *,
    min_level: int = _WARNING,
    top: int = 10,
    options: Mapping[str, Any] | None = None,
) -> Report:
    """Group the records of ``index`` (a pattern) in one aggregation query."""
    es_module = import_client()  # MissingDependencyError names the extra
    report = _new_report(f"{_redact(url)} {index}", window, min_level)
    es = new_client([url], **dict(options or {}))
    try:
        paths = (*_TEMPLATE_FIELDS, *_MESSAGE_FIELDS, *_HOST_FIELDS, *(t[0] for t in _LEVEL_TERMS))
        keywords = _keyword_fields(es, index, paths)
        body = _search_body(keywords, window, min_level, top)
        result = es.search(index=index, size=0, track_total_hits=True, **body)
    except es_module.NotFoundError:
        return report  # no such index: nothing broke there
    except Exception as exc:
        msg = f"Elasticsearch {_redact(url)}: {type(exc).__name__}: {exc}"
        raise SinkError(msg) from exc
    finally:
        es.close()
    report.total = int(result["hits"]["total"]["value"])
    groups: dict[str, Group] = {}
    for name, agg in dict(result.get("aggregations", {})).items():
        by = "template" if name.startswith("template") else "message"
        buckets = (agg if by == "template" else agg.get("groups", {})).get("buckets", [])
        for bucket in buckets:
            _merge(groups, _group_from_bucket(bucket, by))
    _top(groups.values(), top, report)
    return report


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


# -- output ---------------------------------------------------------------------------------


def _printable(text: str, width: int | None = None) -> str:
    """``text`` with control characters escaped (a message cannot drive the terminal), cut to
    ``width`` characters — between escapes, never inside one (a cut ``\\x9`` would read as
    another character)."""
    pieces = [c if c.isprintable() else repr(c)[1:-1] for c in text]
    out = "".join(pieces)
    if width is None or len(out) <= width:
        return out
    kept = []
    room = width - 1
    for piece in pieces:
        room -= len(piece)
        if room < 0:
            break
        kept.append(piece)
    return "".join(kept) + "\u2026"


def _short(moment: str) -> str:
    """``2026-12-01T10:00:00.123456Z`` as ``2026-12-01 10:00:00``, escaped (a time that
    parses may still hold any character between date and time)."""
    return _printable(moment[:19].replace("T", " ")) if moment else "-"


def print_report(report: Report, out: IO[str], width: int = 100) -> None:
    """The terminal table: one line per group, then its example, most frequent first."""
    window = f"since {report.since}" if report.since else "all time"
    if report.until:
        window += f" until {report.until}"
    out.write(
        f"{report.min_level} and above, {window}: {report.total} records, "
        f"{len(report.groups)} groups shown\n"
    )
    if not report.groups:
        out.write("nothing to report\n")
        return
    out.write(f"{'COUNT':>7}  {'FIRST SEEN':19}  {'LAST SEEN':19}  {'HOSTS':>5}  GROUP\n")
    for group in report.groups:
        label = group.key if group.by == "template" else f"(message) {group.key}"
        out.write(
            f"{group.count:>7}  {_short(group.first):19}  {_short(group.last):19}  "
            f"{group.hosts:>5}  {_printable(label, max(20, width - 60))}\n"
        )
        ex = group.example
        if ex:
            where = " ".join(_printable(ex[k]) for k in ("level", "host", "logger") if ex.get(k))
            out.write(f"{'':9}e.g. {where}: {_printable(ex.get('message', ''), width - 20)}\n")
    if report.other:
        out.write(f"{report.other:>7}  records in other groups\n")


DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``mqlogging errors``'s options on ``parser``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--es", metavar="URL", help="Elasticsearch URL")
    source.add_argument("--file", nargs="+", metavar="PATH", help="JSON-lines files or globs")
    parser.add_argument("--index", metavar="PATTERN", help="index pattern (with --es)")
    parser.add_argument(
        "--since",
        metavar="TIME",
        default="1h",
        help="ISO-8601 time or 15m, 1h, 2d ago (default 1h)",
    )
    parser.add_argument("--until", metavar="TIME", help="ISO-8601 time or 15m, 1h, 2d ago")
    parser.add_argument(
        "--level", choices=("warning", "error"), default="warning", help="lowest level counted"
    )
    parser.add_argument(
        "--top", type=int, default=10, metavar="N", help="groups shown (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--api-key-file", metavar="FILE", help="Elasticsearch API key, from a file")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="Elasticsearch API key, from the environment"
    )
    parser.add_argument("--username", metavar="NAME", help="Elasticsearch user (basic auth)")
    parser.add_argument("--password-file", metavar="FILE", help="its password, from a file")
    parser.add_argument("--password-env", metavar="VAR", help="its password, from the environment")
    parser.add_argument("--ca-certs", metavar="FILE", help="CA bundle for --es over https")
    parser.add_argument(
        "--no-verify", action="store_true", help="do not verify the server certificate"
    )


def run_command(args: argparse.Namespace) -> int:
    """Print the report the parsed ``args`` ask for; 0, or 2 on a usage or source error."""
    now = datetime.now(timezone.utc)
    since = parse_moment(args.since, now=now, option="--since") if args.since else None
    until = parse_moment(args.until, now=now, option="--until") if args.until else None
    if args.top < 1:
        msg = f"--top {args.top}: give at least 1"
        raise ConfigurationError(msg)
    if bool(args.es) != bool(args.index):
        msg = "--es needs --index PATTERN (e.g. --index 'logs-mqlogging-*'), and --index needs --es"
        raise ConfigurationError(msg)
    window = Window(since, until)
    min_level = _ERROR if args.level == "error" else _WARNING
    if args.es:
        report = errors_from_es(
            args.es,
            args.index,
            window,
            min_level=min_level,
            top=args.top,
            options=_es_options(args),
        )
    else:
        report = errors_from_files(args.file, window, min_level=min_level, top=args.top)
    if args.json:
        json.dump(report.as_json(), sys.stdout, indent=2)
        print()
    else:
        print_report(report, sys.stdout)
    return 0
