"""Outage tests use the distributed suite's ``own_nats`` / ``own_redis`` / ``own_cluster``
fixtures (tests/integration/distributed/conftest.py): servers of each test's own, so a test
can stop, pause (SIGSTOP) or restart them without touching the ones the suite shares."""
