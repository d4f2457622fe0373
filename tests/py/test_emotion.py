"""How people feel: VADER against the reference package, NPS/CSAT/CES and their intervals
against hand computation, scipy and statsmodels, the emotion map's stages, the hosted
survey page with signed tokens, and the HTTP answer equal to the CLI's."""

from __future__ import annotations

import json
import os
import stat
import time

import requests
from scipy import stats
from statsmodels.stats.proportion import proportion_confint
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from harness import create_project, export_events, run_cli

SENTENCES = [
    "VADER is smart, handsome, and funny.",
    "VADER is smart, handsome, and funny!",
    "VADER is very smart, handsome, and funny.",
    "VADER is VERY SMART, handsome, and FUNNY.",
    "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
    "VADER is not smart, handsome, nor funny.",
    "The book was good.",
    "At least it isn't a horrible book.",
    "The book was only kind of good.",
    "The plot was good, but the characters are uncompelling and the dialog is not great.",
    "Today SUX!",
    "Today only kinda sux! But I'll get by, lol",
    "Make sure you :) or :D today!",
    "Catch utf-8 emoji such as 💘 and 💋 and 😁",
    "Not bad at all",
    "Sentiment analysis has never been good.",
    "Sentiment analysis has never been this good!",
    "Most automated sentiment analysis tools are shit.",
    "With VADER, sentiment analysis is the shit!",
    "Other sentiment analysis tools can be quite bad.",
    "On the other hand, VADER is quite bad ass",
    "VADER is such a badass!",
    "Without a doubt, excellent idea.",
    "Roger Dodger is one of the most compelling variations on this theme.",
    "Roger Dodger is at least compelling as a variation on the theme.",
    "Roger Dodger is one of the least compelling variations on this theme.",
    "Not such a badass after all.",
    "Without a doubt, an excellent idea.",
    "No problem, the delivery was great.",
    "No, I did not like it at all.",
    "There is no love or hate here",
    "It was good but not great, but ok",
    "This is not so bad, but also not good",
    "I am sooo happy!!!!! Really?? Really???",
    "kind of good, sort of bad",
    "The service was just enough, barely acceptable.",
    "Checkout kept rejecting my postcode.",
    "Support closed my ticket without fixing anything, useless 😠",
    "Delivery was a week late and nobody told me. Terrible.",
    "Sound is amazing for the price 🎧",
    "Synchronisierung funktioniert einfach super.",
    "Très bon son, livraison rapide.",
    "音質がとても良いです！",
    "ok, fine, whatever.",
    "GREAT product, TERRIBLE support",
    "I don't love it, I don't hate it.",
    "Never so happy with a purchase!",
    "The app isn't bad, but it isn't good either... meh",
    "",
    "   ",
    "!!!",
    "Yeah right, as if that works",
    "kiss of death for this product",
    "a bus stop is where I waited, happy",
]


def test_sentiment_matches_the_reference_vader(throughline_bin):
    proc = run_cli(throughline_bin, "sentiment", input="\n".join(SENTENCES) + "\n")
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [g["text"] for g in got] == SENTENCES
    ref = SentimentIntensityAnalyzer()
    for g in got:
        want = ref.polarity_scores(g["text"])
        # The reference rounds compound to 4 decimals and the shares to 3.
        assert abs(g["compound"] - want["compound"]) < 1e-3, (g, want)
        for k in ("pos", "neu", "neg"):
            assert abs(g[k] - want[k]) < 2e-3, (k, g, want)


def iso_day(day: int, hour: int = 12) -> str:
    return f"2026-09-{day:02d}T{hour:02d}:00:00.000Z"


def survey_events(answers):
    """answers: (user, survey, score, stage, comment) -> Survey Responded messages."""
    out = []
    for i, (user, survey, score, stage, comment) in enumerate(answers):
        props = {"survey": survey, "score": score}
        if stage:
            props["stage"] = stage
        if comment:
            props["comment"] = comment
        out.append({"type": "track", "event": "Survey Responded", "userId": user, "messageId": f"s{i}",
                    "timestamp": iso_day(1 + i % 25), "properties": props})
    return out


def import_messages(bin_path, data_dir, project, messages, tmp_path, name="m.jsonl"):
    f = tmp_path / name
    f.write_text("".join(json.dumps(m) + "\n" for m in messages))
    run_cli(bin_path, "import", "--data", str(data_dir), "--project", project, str(f))


def test_scores_and_intervals_match_hand_computation_scipy_and_statsmodels(throughline_bin, data_dir, tmp_path):
    create_project(throughline_bin, data_dir, "fb")
    nps_scores = [10, 9, 9, 10, 8, 7, 6, 3, 10, 9, 0, 5, 9, 8, 10, 2, 9, 10, 7, 6, 9, 9, 10, 1, 8, 9, 10, 4, 9, 10,
                  10, 9, 8]
    csat_scores = [5, 4, 4, 3, 5, 2, 5, 4, 1, 5, 4, 4, 3, 5, 5, 4, 2, 5, 4, 5, 3, 4, 5, 5, 4, 1, 5, 4, 4, 5, 3]
    ces_scores = [7, 6, 5, 7, 2, 6, 7, 4, 5, 6, 7, 3, 6, 6, 7, 5, 1, 7, 6, 5, 6, 7, 4, 6, 7, 6, 5, 7, 6, 3, 6]
    answers = ([(f"p{i}", "nps", s, "post_purchase", None) for i, s in enumerate(nps_scores)]
               + [(f"c{i}", "csat", s, "support", None) for i, s in enumerate(csat_scores)]
               + [(f"e{i}", "ces", s, "checkout", None) for i, s in enumerate(ces_scores)]
               # Invalid answers are counted and left out.
               + [("x1", "nps", 11, None, None), ("x2", "csat", 0, None, None), ("x3", "stars", 5, None, None)])
    import_messages(throughline_bin, data_dir, "fb", survey_events(answers), tmp_path)
    r = json.loads(run_cli(throughline_bin, "query", "emotion", "--data", str(data_dir), "--project", "fb",
                           "--min-responses", "30").stdout)
    assert r["invalid_answers"] == 3
    total = r["total"]

    # NPS: hand computation, and scipy's t interval on the answers coded +100 / 0 / -100.
    n = len(nps_scores)
    p = sum(s >= 9 for s in nps_scores)
    d = sum(s <= 6 for s in nps_scores)
    nps = total["nps"]
    assert (nps["responses"], nps["promoters"], nps["detractors"]) == (n, p, d)
    assert abs(nps["score"] - 100 * (p - d) / n) < 1e-9
    coded = [100 if s >= 9 else (-100 if s <= 6 else 0) for s in nps_scores]
    lo, hi = stats.t.interval(0.95, n - 1, loc=sum(coded) / n, scale=stats.sem(coded))
    assert abs(nps["ci_low"] - lo) < 1e-6 and abs(nps["ci_high"] - hi) < 1e-6, (nps, lo, hi)
    assert [b["count"] for b in nps["histogram"]] == [nps_scores.count(v) for v in range(11)]

    # CSAT: share of 4-5, Wilson interval as statsmodels computes it.
    k = sum(s >= 4 for s in csat_scores)
    csat = total["csat"]
    assert abs(csat["score"] - k / len(csat_scores)) < 1e-12
    lo, hi = proportion_confint(k, len(csat_scores), alpha=0.05, method="wilson")
    assert abs(csat["ci_low"] - lo) < 1e-9 and abs(csat["ci_high"] - hi) < 1e-9, (csat, lo, hi)

    # CES: mean with scipy's t interval.
    ces = total["ces"]
    m = sum(ces_scores) / len(ces_scores)
    lo, hi = stats.t.interval(0.95, len(ces_scores) - 1, loc=m, scale=stats.sem(ces_scores))
    assert abs(ces["score"] - m) < 1e-12
    assert abs(ces["ci_low"] - lo) < 1e-9 and abs(ces["ci_high"] - hi) < 1e-9

    # Other confidence levels agree too.
    r90 = json.loads(run_cli(throughline_bin, "query", "emotion", "--data", str(data_dir), "--project", "fb",
                             "--min-responses", "30", "--confidence", "0.9").stdout)
    lo, hi = proportion_confint(k, len(csat_scores), alpha=0.10, method="wilson")
    assert abs(r90["total"]["csat"]["ci_low"] - lo) < 1e-9 and abs(r90["total"]["csat"]["ci_high"] - hi) < 1e-9

    # Each survey's stage property puts it in its stage; the defaults map post_purchase to
    # onboarding, support to support, checkout to purchase.
    stages = {s["stage"]: s for s in r["stages"]}
    assert stages["onboarding"]["nps"]["responses"] == n
    assert stages["support"]["csat"]["responses"] == len(csat_scores)
    assert stages["purchase"]["ces"]["responses"] == len(ces_scores)
    # Too few answers: "not enough data", no number.
    assert stages["support"]["nps"]["status"] == "no data"
    few = json.loads(run_cli(throughline_bin, "query", "emotion", "--data", str(data_dir), "--project", "fb",
                             "--min-responses", "34").stdout)
    assert few["total"]["nps"]["status"] == "not enough data"
    assert few["total"]["nps"]["score"] is None and few["total"]["nps"]["ci_low"] is None
    assert few["total"]["nps"]["responses"] == n


def test_the_emotion_map_finds_the_stage_that_hurts(throughline_bin, data_dir, tmp_path):
    """Journeys through the default stages where support is where satisfaction collapses:
    support is a moment of truth, its negative terms name the complaint, drop-off counts."""
    create_project(throughline_bin, data_dir, "shop")
    msgs = []
    n = 0

    def ev(user, name, day, kind="track", **kw):
        nonlocal n
        n += 1
        m = {"type": kind, "userId": user, "messageId": f"e{n}", "timestamp": iso_day(day, 10 + n % 8)}
        if kind == "page":
            m["name"] = name
        else:
            m["event"] = name
        m.update(kw)
        msgs.append(m)

    for i in range(120):
        u = f"u{i}"
        ev(u, "Home", 1, kind="page", properties={"path": "/", "url": "https://shop.example/"})
        ev(u, "Product Viewed", 2)
        if i % 2 == 0:
            ev(u, "Order Completed", 3)
            ev(u, "Survey Responded", 4, properties={"survey": "csat", "score": 5, "stage": "purchase",
                                                     "comment": "Great checkout, love it."})
        if i % 4 == 0:
            ev(u, "Support Ticket Opened", 6, properties={"message": "The refund is late and support is useless, terrible."})
            ev(u, "Survey Responded", 7, properties={"survey": "csat", "score": 1 + i % 2, "stage": "support",
                                                     "comment": "Awful support, the refund is still late."})
    import_messages(throughline_bin, data_dir, "shop", msgs, tmp_path)
    r = json.loads(run_cli(throughline_bin, "query", "emotion", "--data", str(data_dir), "--project", "shop",
                           "--min-responses", "20", "--by", "stage").stdout)
    stages = {s["stage"]: s for s in r["stages"]}
    assert stages["awareness"]["persons"] == 120
    assert stages["consideration"]["persons"] == 120
    assert stages["purchase"]["persons"] == 60
    # Consideration continued to purchase for half; purchase continued (to support) for half of those.
    assert stages["consideration"]["continued"] == 60
    assert abs(stages["consideration"]["drop_off"] - 0.5) < 1e-12
    support = stages["support"]
    assert support["csat"]["responses"] == 30 and support["csat"]["score"] == 0.0
    assert "low_csat" in support["flags"] and "negative_sentiment" in support["flags"]
    assert "support" in r["moments_of_truth"] and "purchase" not in r["moments_of_truth"]
    terms = [t["term"] for t in support["sentiment"]["negative_terms"]]
    assert "late" in terms and "refund" in terms, terms
    assert support["sentiment"]["texts"] == 60  # 30 tickets and 30 comments
    assert support["sentiment"]["most_negative"] and support["sentiment"]["most_negative"][0]["compound"] < -0.4
    assert [g["key"] for g in r["groups"]][:2] == ["purchase", "support"]


def test_the_hosted_survey_page_records_one_answer_per_signed_token(throughline_bin, data_dir, make_server, tmp_path):
    create_project(throughline_bin, data_dir, "shop")
    other = create_project(throughline_bin, data_dir, "other")
    server = make_server(data_dir)
    server.start()

    def mint(project="shop", person="ann", survey="nps", *extra):
        out = run_cli(throughline_bin, "survey", "link", "--data", str(data_dir), "--project", project, "--person",
                      person, "--survey", survey, "--stage", "support", "--base-url", server.url, *extra).stdout
        return json.loads(out)

    link = mint()
    secret = data_dir / "projects" / "shop" / "token-secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    page = requests.get(link["url"], timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<form method=post>" in page.text and "<script" not in page.text
    assert page.text.count("type=radio") == 11

    # Forged and altered tokens: 404, nothing recorded. Flip a character of the payload and
    # of the MAC; sign with another project's secret; a survey token of another project
    # pointed at this one's name.
    token = link["token"]
    payload, mac = token.split(".")
    forged = [
        payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + mac,
        payload + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"),
        mint("other")["token"].split(".")[0] + "." + mac,
        "not-a-token",
    ]
    for t in forged:
        assert requests.get(f"{server.url}/s/{t}", timeout=10).status_code == 404, t
        assert requests.post(f"{server.url}/s/{t}", data={"score": "9"}, timeout=10).status_code == 404, t

    bad = requests.post(link["url"], data={"score": "11"}, timeout=10)
    assert bad.status_code == 400 and "from 0 to 10" in bad.text
    ok = requests.post(link["url"], data={"score": "9", "comment": "Quick & helpful <3"}, timeout=10)
    assert ok.status_code == 200 and "recorded" in ok.text
    again = requests.post(link["url"], data={"score": "2"}, timeout=10)
    assert again.status_code == 200 and "already answered" in again.text
    assert "already answered" in requests.get(link["url"], timeout=10).text

    expiring = mint("shop", "bob", "csat", "--expires", "1s")
    time.sleep(1.2)
    assert requests.get(expiring["url"], timeout=10).status_code == 410
    assert requests.post(expiring["url"], data={"score": "5"}, timeout=10).status_code == 410
    assert other["name"] == "other"

    server.stop()
    events = [e for e in export_events(throughline_bin, data_dir, "shop") if e.get("event") == "Survey Responded"]
    assert len(events) == 1, events
    e = events[0]
    assert e["userId"] == "ann" and e["messageId"] == "survey-" + json.loads(
        __import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["n"]
    assert e["properties"]["survey"] == "nps" and e["properties"]["score"] == 9
    assert e["properties"]["comment"] == "Quick & helpful <3" and e["properties"]["stage"] == "support"
    assert export_events(throughline_bin, data_dir, "other") == []


def test_http_answers_equal_the_cli(throughline_bin, data_dir, make_server, tmp_path):
    info = create_project(throughline_bin, data_dir, "fb")
    answers = [(f"p{i}", "nps", i % 11, "support", "Terrible wait, awful." if i % 3 == 0 else "Lovely, great help!")
               for i in range(60)]
    msgs = survey_events(answers)
    for i in range(40):
        msgs.append({"type": "track", "event": "Email Sent", "userId": f"p{i}", "messageId": f"es{i}",
                     "timestamp": iso_day(1 + i % 20)})
    import_messages(throughline_bin, data_dir, "fb", msgs, tmp_path)
    bodies = {
        "emotion": {"by": "week", "min_responses": 10},
        "fatigue": {"conversion": "Order Completed", "min_windows": 1},
        "audit": {},
    }
    server = make_server(data_dir)
    server.start()
    http = {}
    for kind, body in bodies.items():
        resp = requests.post(f"{server.url}/api/v1/projects/fb/query/{kind}", json=body,
                             headers={"Authorization": f"Bearer {info['api_key']}"}, timeout=30)
        assert resp.status_code == 200, resp.text
        http[kind] = resp.json()
    bad = requests.post(f"{server.url}/api/v1/projects/fb/query/emotion", json={"by": "colour"},
                        headers={"Authorization": f"Bearer {info['api_key']}"}, timeout=10)
    assert bad.status_code == 400 and "unknown breakdown" in bad.json()["error"]
    server.stop()
    base = ["--data", str(data_dir), "--project", "fb"]
    cli = {
        "emotion": run_cli(throughline_bin, "query", "emotion", *base, "--by", "week", "--min-responses", "10").stdout,
        "fatigue": run_cli(throughline_bin, "query", "fatigue", *base, "--conversion", "Order Completed",
                           "--min-windows", "1").stdout,
        "audit": run_cli(throughline_bin, "query", "audit", *base).stdout,
    }
    for kind in bodies:
        assert json.loads(cli[kind]) == http[kind], kind
    assert http["emotion"]["total"]["sentiment"]["texts"] == 60
    assert http["emotion"]["groups"], "week groups"
