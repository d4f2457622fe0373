"""The soak test, short: `bench/soak.py` for about a minute against the real binary.

Mixed ingestion and queries at a steady rate, plus a write key limited on purpose: no
error but the 429s it asked for (each with Retry-After), and memory that does not keep
growing in the second half of the run (a generous bound: this is a leak detector, not a
benchmark). `bench/soak` runs the same code for 30 minutes by hand.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import soak  # noqa: E402

SOAK_SECONDS = 75
# Growth allowed over the second half, as a share of the second half's smallest RSS, and
# at least this many MB (a 2-core machine shared with compilers is noisy).
GROWTH_SHARE_MAX = 0.5
GROWTH_MB_MIN = 64


def test_a_short_soak_has_no_errors_and_flat_memory(throughline_bin, tmp_path):
    r = soak.soak(throughline_bin, SOAK_SECONDS, ingest_clients=2, batches_per_second=10, batch=50,
                  queries_per_second=0.5, sample_seconds=2, work=tmp_path, log=lambda *a, **k: None)
    detail = soak.markdown(r, "test_soak")
    assert r["errors"] == 0, detail + f"\n{r['ingest']['error_samples']} {r['query']['error_samples']}" \
                                      f" {r['limited']['error_samples']}"
    assert r["ingest"]["requests"] > 0 and r["events_accepted"] == r["ingest"]["statuses"]["200"] * 50, detail
    assert r["query"]["statuses"].get("200", 0) >= 5, detail
    assert r["limited"]["statuses"].get("429", 0) > 0, "the limited key was refused at twice its rate\n" + detail
    assert r["limited"]["statuses"].get("200", 0) > 0, "and let through at its rate\n" + detail
    m = r["rss_mb"]
    growth = m["second_half_max"] - m["second_half_min"]
    assert growth <= max(GROWTH_MB_MIN, GROWTH_SHARE_MAX * m["second_half_min"]), detail
