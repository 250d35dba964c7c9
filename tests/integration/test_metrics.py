"""Metrics and alerts of the real daemon in the DANE test world.

The daemon serves ``[metrics] listen``; the test scrapes it over HTTP and parses the text
with prometheus_client's own parser, then checks that the values moved with the lookups
the test made through Postfix's postmap. The alerts that the DNS world can trigger are
triggered here (resolver-not-validating, dane-temp); level-dropped is in test_probe.py
(damping), sts-stale in tests/unit/test_alerts.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import Daemon, base_sections, free_port
from tests.world.world import World

pytestmark = pytest.mark.integration

SCRAPE_TIMEOUT: Final = 10.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("policyd_"), family.name
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def start(directory: Path, world: World, nameserver: str, **extra: Mapping[str, object]) -> Daemon:
    sections = base_sections(directory, nameserver)
    sections["probe"] = {"enabled": False}
    sections["tls"] = {"ca_file": str(world.ca_file)}
    sections["sts"] = {"cold_budget": 1.0}
    port = free_port()
    sections["metrics"] = {"listen": f"inet:127.0.0.1:{port}"}
    for name, table in extra.items():
        sections.setdefault(name, {}).update(table)
    d = Daemon(directory, sections)
    d.start()
    return d


@pytest.fixture(scope="module")
def daemon(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start(
        tmp_path_factory.mktemp("metrics"),
        world,
        world.resolver,
        alerts={"dane_temp_after": 1.0},
        **{"profiles.trial": {"dry_run": True}},
    )
    yield d
    d.stop()


def port_of(daemon: Daemon) -> int:
    listen = str(daemon.sections["metrics"]["listen"])
    return int(listen.rsplit(":", 1)[1])


def test_values_move_with_lookups(daemon: Daemon) -> None:
    port = port_of(daemon)
    before = scrape(port)
    assert daemon.postmap("dane-ee.test") == ["dane-only"]  # decided now: a miss
    assert daemon.postmap("dane-ee.test") == ["dane-only"]  # from memory: a hit
    assert daemon.postmap("insecure.test") == ["NOTFOUND"]
    assert daemon.postmap("dane-ee.test", name="nosuchprofile")[0].startswith("ERROR")
    assert daemon.postmap("bogus.test")[0].startswith("ERROR")  # TEMP
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("policyd_lookups_total", result="miss") == 2
    assert moved("policyd_lookups_total", result="hit") == 1
    assert moved("policyd_lookups_total", result="perm") == 1
    assert moved("policyd_lookups_total", result="temp") == 1
    assert moved("policyd_answers_total", profile="postfix", level="dane-only") == 2
    assert moved("policyd_answers_total", profile="postfix", level="NOTFOUND") == 1
    assert moved("policyd_answers_total", profile="postfix", level="TEMP") == 1
    assert moved("policyd_lookup_duration_seconds_count", path="slow") == 4
    assert moved("policyd_dns_queries_total", outcome="secure") >= 3  # MX, A/AAAA, TLSA
    assert moved("policyd_dns_queries_total", outcome="insecure") >= 1
    assert moved("policyd_dns_queries_total", outcome="failed") >= 1
    assert value(after, "policyd_destinations_cached") >= 2
    assert value(after, "policyd_resolver_validating") == 1
    assert value(after, "policyd_store_errors_total") == 0
    assert value(after, "policyd_connections_refused_total") == 0
    inf = value(after, "policyd_lookup_duration_seconds_bucket", path="slow", le="+Inf")
    assert inf == value(after, "policyd_lookup_duration_seconds_count", path="slow")


def test_dry_run_profile(daemon: Daemon) -> None:
    """A dry-run profile decides and counts but tells Postfix NOTFOUND; policyctl report
    lists what it would have changed."""
    before = scrape(port_of(daemon))
    assert daemon.postmap("dane-ta.test", name="trial") == ["NOTFOUND"]
    assert daemon.postmap("dane-ta.test") == ["dane-only"]  # the live profile enforces
    daemon.wait_log(
        re.escape("dane-ta.test: level=dane-only profile=trial dry-run=yes"), timeout=15.0
    )
    after = scrape(port_of(daemon))
    moved = value(
        after, "policyd_dry_run_answers_total", profile="trial", level="dane-only"
    ) - value(before, "policyd_dry_run_answers_total", profile="trial", level="dane-only")
    assert moved == 1
    assert value(after, "policyd_answers_total", profile="trial", level="NOTFOUND") >= 1
    res = subprocess.run(
        [sys.executable, "-m", "policyd.cli.policyctl", "--socket", daemon.control, "report",
         "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(res.stdout)
    assert "dane-ta.test" in report["dry_run"]["trial"]["would_change"]["dane-only"]
    assert report["dry_run"]["trial"]["answers"]["dane-only"] >= 1
    assert "postfix" not in report["dry_run"]
    table = subprocess.run(
        [sys.executable, "-m", "policyd.cli.policyctl", "--socket", daemon.control, "report"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "Dry run (profile trial):" in table
    assert "dane-ta.test" in table.split("Dry run (profile trial):")[1]
    explained = subprocess.run(
        [sys.executable, "-m", "policyd.cli.policyctl", "--socket", daemon.control, "explain",
         "dane-ta.test", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    rows = {a["profile"]: a for a in json.loads(explained)["answers"]}
    assert rows["trial"]["reply"] == "NOTFOUND"
    assert rows["trial"]["would_reply"] == "OK dane-only"
    assert rows["trial"]["dry_run"] is True
    assert rows["postfix"]["reply"] == "OK dane-only" and "dry_run" not in rows["postfix"]


def test_other_paths_are_not_found(daemon: Daemon) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{port_of(daemon)}/", timeout=SCRAPE_TIMEOUT)
    assert caught.value.code == 404


def test_dane_temp_alert(daemon: Daemon) -> None:
    """bogus.test answers TEMP (bogus DNSSEC); past dane_temp_after the alert fires once."""
    port = port_of(daemon)
    assert daemon.postmap("expired.test")[0].startswith("ERROR")
    assert "alert=dane-temp destination=expired.test" not in daemon.log()
    time.sleep(6.0)  # a TEMP answer is cached 5 s; then the next lookup decides again
    assert daemon.postmap("expired.test")[0].startswith("ERROR")
    daemon.wait_log(re.escape("alert=dane-temp destination=expired.test"), timeout=15.0)
    samples = scrape(port)
    assert value(samples, "policyd_alerts_total", alert="dane-temp") >= 1
    assert value(samples, "policyd_alerts_active", alert="dane-temp") >= 1


def test_no_resolver_alert_with_a_validating_resolver(daemon: Daemon) -> None:
    assert "alert=resolver-not-validating" not in daemon.log()


def test_resolver_not_validating_alert(world: World, tmp_path: Path) -> None:
    """The authoritative server answers but never validates: no AD bit for the root."""
    d = start(tmp_path, world, world.authoritative)
    try:
        d.wait_log(re.escape("alert=resolver-not-validating name=."), timeout=15.0)
        samples = scrape(port_of(d))
        assert value(samples, "policyd_resolver_validating") == 0
        assert value(samples, "policyd_alerts_total", alert="resolver-not-validating") == 1
    finally:
        d.stop()
