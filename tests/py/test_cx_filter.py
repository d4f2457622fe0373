"""Emotion, fatigue and audit take the first-touch filter every other query takes.

A filter keeps the persons whose first touch in the range has the given channel or
campaign, and the analysis then runs over those persons alone. So the filtered answer must
equal the unfiltered answer of a second project that holds only those persons' events
(every device of each, exported from the first with their `person_id`). The persons come
from another query kind: the drill-down of a one-step funnel over every visit, filtered
the same way. The range is pinned, because an unpinned range ends where the data ends,
and the subset's data may end earlier.
"""

from __future__ import annotations

import json

import pytest

from harness import create_project, export_events, first_difference, run_cli

# The whole generated range, and more: both projects then read the same window.
RANGE = ["--from", "2020-01-01", "--to", "2030-01-01"]
QUERIES = {
    "emotion": ["--by", "channel", "--min-responses", "3"],
    "fatigue": ["--conversion", "Order Completed", "--now", "2030-01-01"],
    "audit": ["--conversion", "Order Completed"],
}


def filtered_persons(bin_path: str, data_dir, project: str, flag: list[str]) -> set[str]:
    """The persons `flag` keeps, by the funnel's drill-down (paged)."""
    out: set[str] = set()
    offset = 0
    while True:
        r = json.loads(run_cli(bin_path, "query", "funnel", "--data", str(data_dir), "--project", project,
                               "--step", "page:*", *RANGE, *flag, "--persons-at", "1", "--persons-status",
                               "converted", "--persons-offset", str(offset), "--persons-limit", "1000").stdout)
        page = r["persons"]["person_ids"]
        out.update(page)
        offset += len(page)
        if not page or offset >= r["persons"]["total"]:
            assert len(out) == r["persons"]["total"]
            return out


def answer(bin_path: str, data_dir, project: str, kind: str, flag: list[str]) -> dict:
    return json.loads(run_cli(bin_path, "query", kind, "--data", str(data_dir), "--project", project,
                              *QUERIES[kind], *RANGE, *flag, timeout=300).stdout)


@pytest.mark.parametrize("seed,flag", [
    (41, ["--channel", "Organic Social"]),
    (42, ["--channel", "Paid Search"]),
    (43, ["--campaign", "(not set)"]),
])
def test_a_filter_answers_as_a_project_of_its_persons_alone(throughline_bin, tmp_path, seed, flag):
    generated = tmp_path / "generated.jsonl"
    run_cli(throughline_bin, "generate", "--brand", "headphones", "--persons", "1200", "--seed", str(seed),
            "--duplicates", "0.02", "--out-of-order", "--out", str(generated), timeout=120)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("all", "subset"):
        create_project(throughline_bin, data_dir, name)
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "all", str(generated), "--quiet",
            timeout=120)

    kept = filtered_persons(throughline_bin, data_dir, "all", flag)
    everyone = filtered_persons(throughline_bin, data_dir, "all", [])
    # A filter that keeps nobody or everybody would prove nothing.
    assert 20 <= len(kept) < len(everyone), (len(kept), len(everyone))

    events = export_events(throughline_bin, data_dir, "all")
    subset = tmp_path / "subset.jsonl"
    with open(subset, "w", encoding="utf-8") as f:
        for e in events:
            if e["person_id"] in kept:
                f.write(json.dumps({k: v for k, v in e.items() if k not in ("person_id", "receivedAt")}) + "\n")
    run_cli(throughline_bin, "import", "--data", str(data_dir), "--project", "subset", str(subset), "--quiet",
            timeout=120)

    for kind in QUERIES:
        filtered = answer(throughline_bin, data_dir, "all", kind, flag)
        alone = answer(throughline_bin, data_dir, "subset", kind, [])
        unfiltered = answer(throughline_bin, data_dir, "all", kind, [])
        assert filtered == alone, f"{kind} {flag}: {first_difference(filtered, alone)}"
        assert filtered != unfiltered, f"{kind} {flag}: the filter changed nothing"
