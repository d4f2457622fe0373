"""The `throughline` command line: projects, the data-dir lock, graceful stop, help text."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from harness import by_message_id, create_project, export_events, free_port, parse_jsonl, run_cli

REQUIRED_COMMANDS = [["serve"], ["projects"], ["projects", "create"], ["projects", "list"], ["export"], ["import"]]


def test_projects_create_prints_name_and_keys_as_json(throughline_bin, data_dir):
    proc = run_cli(throughline_bin, "projects", "create", "acme-shop", "--data", str(data_dir))
    info = json.loads(proc.stdout)  # all of stdout is one JSON document
    assert info["name"] == "acme-shop"
    for key in ("write_key", "api_key"):
        assert isinstance(info[key], str) and len(info[key]) >= 16, f"{key} should be a long random token: {info}"
        assert re.fullmatch(r"[\x21-\x7e]+", info[key]), f"{key} must be printable without spaces or ':' issues: {info[key]!r}"
    assert ":" not in info["write_key"], "a write key is a Basic-auth username: it cannot contain ':'"
    assert info["write_key"] != info["api_key"]

    other = json.loads(run_cli(throughline_bin, "projects", "create", "agency-client", "--data", str(data_dir)).stdout)
    assert other["name"] == "agency-client"
    assert {other["write_key"], other["api_key"]}.isdisjoint({info["write_key"], info["api_key"]}), "keys must differ per project"


def test_projects_list_shows_every_project(throughline_bin, data_dir):
    names = ["alpha", "beta-brand", "gamma"]
    for n in names:
        create_project(throughline_bin, data_dir, n)
    out = run_cli(throughline_bin, "projects", "list", "--data", str(data_dir)).stdout
    for n in names:
        assert n in out, f"`projects list` does not show {n!r}:\n{out}"


def test_export_unknown_project_fails_naming_it(throughline_bin, data_dir):
    create_project(throughline_bin, data_dir, "real")
    proc = run_cli(throughline_bin, "export", "--data", str(data_dir), "--project", "no-such-project", "--format", "jsonl", check=False)
    assert proc.returncode != 0, f"export of an unknown project exited 0: {proc.stdout[:300]}"
    assert "no-such-project" in proc.stderr, f"error does not name the project: {proc.stderr!r}"


def test_export_to_stdout_equals_export_to_file(throughline_bin, data_dir, make_server, tmp_path):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    batch = [{"type": "track", "messageId": f"m-{i}", "userId": f"u-{i % 3}", "event": "E", "properties": {"i": i, "s": "ü🎧"}} for i in range(30)]
    assert server.post("/v1/batch", {"batch": batch}, key).status_code == 200
    server.stop()
    stdout = run_cli(throughline_bin, "export", "--data", str(data_dir), "--project", "p", "--format", "jsonl").stdout
    from_file = export_events(throughline_bin, data_dir, "p", out=tmp_path / "out.jsonl")
    from_stdout = parse_jsonl(stdout)
    assert len(from_file) == 30
    key_of = lambda e: e["messageId"]  # noqa: E731
    assert sorted(from_stdout, key=key_of) == sorted(from_file, key=key_of)


def _import_args(data_dir, tmp_path):
    src = tmp_path / "import.jsonl"
    src.write_text(json.dumps({"type": "track", "messageId": "imp-1", "userId": "u", "event": "Imported"}) + "\n")
    return ["import", "--data", str(data_dir), "--project", "p", "--quiet", str(src)]


@pytest.mark.parametrize("command", ["export", "import", "serve"])
def test_data_dir_held_by_server_refuses_a_second_process(throughline_bin, data_dir, make_server, tmp_path, command):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    args = {
        "export": ["export", "--data", str(data_dir), "--project", "p", "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")],
        "import": _import_args(data_dir, tmp_path),
        "serve": ["serve", "--data", str(data_dir), "--listen", f"127.0.0.1:{free_port()}"],
    }[command]
    try:
        proc = subprocess.run([throughline_bin, *args], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`throughline {command}` on a data dir held by a running server did not exit within 30s (it must refuse)")
    assert proc.returncode != 0, f"`throughline {command}` on a held data dir exited 0\nstdout: {proc.stdout[:300]}\nstderr: {proc.stderr[:300]}"
    assert re.search(rf"\b{server.pid}\b", proc.stderr), (
        f"`throughline {command}` refused but its error does not name the holder's pid {server.pid}: {proc.stderr!r}"
    )
    assert server.running(), "the holding server died"
    # The holder is unharmed: it still accepts events.
    r = server.post("/v1/track", {"userId": "u", "event": "Still Here"}, key)
    assert r.status_code == 200, f"the holding server stopped accepting events after the refusal: {r.status_code} {r.text[:200]}"


def test_sigterm_stops_gracefully_and_releases_the_data_dir(throughline_bin, data_dir, make_server):
    key = create_project(throughline_bin, data_dir, "p")["write_key"]
    server = make_server(data_dir).start()
    ids = []
    for n in range(3):
        batch = [{"type": "page", "messageId": f"pg-{n}-{i}", "anonymousId": "dev", "name": "Home"} for i in range(50)]
        assert server.post("/v1/batch", {"batch": batch}, key).status_code == 200
        ids += [m["messageId"] for m in batch]
    t0 = time.monotonic()
    rc = server.stop()
    assert rc == 0, f"`throughline serve` exited {rc} on SIGTERM (expected a graceful 0)\n{server.log_tail()}"
    print(f"SIGTERM -> exit in {time.monotonic() - t0:.2f}s")
    got = by_message_id(export_events(throughline_bin, data_dir, "p"))
    assert set(ids) <= set(got)
    # The same data dir can be served again at once.
    server.start()
    assert server.stop() == 0


def _subcommands(help_text: str) -> list[str]:
    """Names in clap's `Commands:` section, without `help`."""
    names, in_section = [], False
    for line in help_text.splitlines():
        if re.match(r"^\S.*:\s*$", line):
            in_section = line.strip().lower().rstrip(":") in ("commands", "subcommands")
            continue
        # A name sits at clap's two-space indent; wrapped descriptions are indented deeper.
        m = re.match(r"^ {2}([a-z][a-z0-9-]*)(\s|$)", line) if in_section else None
        if m and m.group(1) != "help":
            names.append(m.group(1))
    return names


def test_help_of_every_subcommand_exits_0_with_an_example(throughline_bin):
    seen, todo = [], [[]]
    while todo:
        path = todo.pop(0)
        proc = run_cli(throughline_bin, *path, "--help", check=False)
        where = " ".join(["throughline", *path, "--help"])
        assert proc.returncode == 0, f"`{where}` exited {proc.returncode}: {proc.stderr[:300]}"
        text = proc.stdout
        assert "example" in text.lower() or "throughline " in text, f"`{where}` shows no example or usage line:\n{text}"
        seen.append(path)
        todo += [[*path, sub] for sub in _subcommands(text)]
        assert len(seen) < 100, "runaway subcommand discovery"
    missing = [" ".join(c) for c in REQUIRED_COMMANDS if c not in seen]
    assert not missing, f"`throughline --help` does not list these commands: {missing} (seen: {[' '.join(p) for p in seen]})"
