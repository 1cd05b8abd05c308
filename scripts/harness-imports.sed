# Rewrite imports of the old test helpers to the harness package (issue #12 item 8).
# Usage, from the repository root, on the files to fix (e.g. new test files):
#   sed -i -E -f scripts/harness-imports.sed tests/path/test_new.py
# or on every Python file under tests/ and benchmarks/:
#   grep -rlE 'tests\.(brokers|tls|helpers|collector\.support|handlers\.conftest)\b' \
#       --include='*.py' tests benchmarks | xargs -r sed -i -E -f scripts/harness-imports.sed
# Then `ruff check --fix FILES` to re-sort the imports (harness sorts before mqlogging).
# Names moved unchanged, except brokers' _reserve_port (now public: reserve_port). The drain
# helpers amqp_url, stomp_url, drain_amqp, drain_stomp, is_marker, seqs, record_id moved from
# tests/handlers/conftest.py to harness/drain.py (its fixtures spool_dir, app_logger stay there).
# TLSRabbitMQ / TLSActiveMQ moved from tests/security/conftest.py to harness/tls_brokers.py
# (its _activemq() is make_tls_activemq()); the security fixtures stay in that conftest.
# The fault runner is `python -m harness.faults` (was benchmarks/faults.py).
s/\btests\.collector\.support\b/harness.collector/g
s/\btests\.handlers\.conftest\b/harness.drain/g
s/\btests\.(brokers|tls|helpers)\b/harness.\1/g
s/\bfrom tests\.security\.conftest import (TLS)/from harness.tls_brokers import \1/g
s/\b_reserve_port\b/reserve_port/g
