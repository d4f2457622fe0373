//! The channel/campaign `filter` of every query kind: a query with a filter answers as
//! the same query over only the persons whose first touch in range matches, which here
//! is checked against the same query on a store holding only those persons' events. Also
//! the assets' per-period conversions (`interval`), the dashboard's sparklines.

use serde_json::{json, Value};
use throughline_classify::Rules;
use throughline_collect::{normalize, Envelope, IdGen};
use throughline_query::filter::Filter;
use throughline_store::{EventBatch, ProjectOptions, ProjectStore};

const HISTORICAL: Envelope = Envelope {
    kind: None,
    sent_at: None,
    context: None,
    historical: true,
};

/// Four persons, each with a first touch and later events:
/// ann: Paid Search (google/cpc, campaign spring), then a direct visit, a purchase;
/// bob: Paid Search (campaign autumn), a purchase;
/// cy:  Organic Social first (facebook referral), then Paid Search spring, a purchase;
/// dee: Direct (no campaign), product views only.
fn messages() -> Vec<(&'static str, Value)> {
    let page = |user: &str, day: u32, min: u32, path: &str, query: &str, referrer: Option<&str>| {
        let mut context =
            json!({"page": {"url": format!("https://shop.example{path}{query}"), "path": path}});
        if let Some(r) = referrer {
            context["page"]["referrer"] = json!(r);
        }
        json!({"type": "page", "userId": user, "name": "Page", "context": context,
               "timestamp": format!("2026-03-{day:02}T10:{min:02}:00Z")})
    };
    let track = |user: &str, day: u32, min: u32, event: &str| {
        json!({"type": "track", "userId": user, "event": event, "properties": {"revenue": 10},
               "context": {"page": {"url": "https://shop.example/checkout", "path": "/checkout"}},
               "timestamp": format!("2026-03-{day:02}T10:{min:02}:00Z")})
    };
    let spring = "?utm_source=google&utm_medium=cpc&utm_campaign=spring";
    vec![
        ("ann", page("ann", 2, 0, "/", spring, None)),
        ("ann", track("ann", 2, 3, "Product Viewed")),
        ("ann", page("ann", 5, 0, "/p", "", None)),
        ("ann", track("ann", 5, 2, "Order Completed")),
        (
            "bob",
            page(
                "bob",
                3,
                0,
                "/",
                "?utm_source=google&utm_medium=cpc&utm_campaign=autumn",
                None,
            ),
        ),
        ("bob", track("bob", 3, 1, "Product Viewed")),
        ("bob", track("bob", 3, 5, "Order Completed")),
        (
            "cy",
            page("cy", 2, 0, "/", "", Some("https://www.facebook.com/")),
        ),
        ("cy", track("cy", 2, 1, "Product Viewed")),
        ("cy", page("cy", 9, 0, "/", spring, None)),
        ("cy", track("cy", 9, 4, "Order Completed")),
        ("dee", page("dee", 4, 0, "/", "", None)),
        ("dee", track("dee", 4, 1, "Product Viewed")),
        ("dee", page("dee", 11, 0, "/p", "", None)),
    ]
}

struct Store {
    dir: std::path::PathBuf,
    project: ProjectStore,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn store(tag: &str, users: &[&str]) -> Store {
    let dir = std::env::temp_dir().join(format!("tl-filter-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let project = ProjectStore::open("p", &dir, ProjectOptions::default()).unwrap();
    let mut ids = IdGen::new(7);
    let events: Vec<_> = messages()
        .into_iter()
        .filter(|(u, _)| users.contains(u))
        .map(|(_, m)| normalize(m, &HISTORICAL, 1_900_000_000_000, &mut ids).unwrap())
        .collect();
    project.append(EventBatch::of(&events)).unwrap();
    project.flush().unwrap();
    Store { dir, project }
}

/// Every query kind's answer on `all` with `filter`, as JSON.
fn answers(s: &Store, filter: Option<Filter>) -> Vec<(&'static str, Value)> {
    use throughline_query as q;
    let snap = s.project.snapshot();
    let snap = throughline_query::source::Source::from(&snap);
    let rules = Rules::ga4_default();
    let f = || filter.clone();
    let j = |v: Result<Value, q::QueryError>| v.unwrap();
    fn to<T: serde::Serialize>(v: T) -> Value {
        serde_json::to_value(v).unwrap()
    }
    let range = (
        Some("2026-03-01".to_string()),
        Some("2026-04-01".to_string()),
    );
    vec![
        (
            "funnel",
            j(q::funnel::run(
                &snap,
                &rules,
                &q::funnel::FunnelRequest {
                    steps: vec!["Product Viewed".into(), "Order Completed".into()],
                    window: "30d".into(),
                    from: range.0.clone(),
                    to: range.1.clone(),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
        (
            "trends",
            j(q::trends::run(
                &snap,
                &rules,
                &q::trends::TrendsRequest {
                    events: vec!["Product Viewed".into(), "Order Completed".into()],
                    from: range.0.clone(),
                    to: range.1.clone(),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
        (
            "retention",
            j(q::retention::run(
                &snap,
                &rules,
                &q::retention::RetentionRequest {
                    start: "Product Viewed".into(),
                    return_event: "Order Completed".into(),
                    periods: 4,
                    from: range.0.clone(),
                    to: range.1.clone(),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
        (
            "sessions",
            j(q::sessions::run(
                &snap,
                &rules,
                &q::sessions::SessionsRequest {
                    from: range.0.clone(),
                    to: range.1.clone(),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
        (
            "paths",
            j(q::paths::run(
                &snap,
                &rules,
                &q::paths::PathsRequest {
                    end: Some("Order Completed".into()),
                    from: range.0.clone(),
                    to: range.1.clone(),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
        (
            "channel paths",
            j(q::paths::run(
                &snap,
                &rules,
                &q::paths::PathsRequest {
                    of: Some("channels".into()),
                    conversion: Some("Order Completed".into()),
                    from: range.0.clone(),
                    to: range.1.clone(),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
        (
            "assets",
            j(q::assets::run(
                &snap,
                &rules,
                &Default::default(),
                &q::assets::AssetsRequest {
                    conversion: "Order Completed".into(),
                    window: "30d".into(),
                    value: Some("revenue".into()),
                    from: range.0.clone(),
                    to: range.1.clone(),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
        (
            "attribution",
            j(q::attribution::run(
                &snap,
                &rules,
                &Default::default(),
                &Default::default(),
                &q::attribution::AttributionRequest {
                    conversion: "Order Completed".into(),
                    from: range.0.clone(),
                    to: range.1.clone(),
                    paths: Some(10),
                    filter: f(),
                    ..Default::default()
                },
            )
            .map(to)),
        ),
    ]
}

fn check(filter: Filter, persons: &[&str], tag: &str) {
    let all = store(&format!("{tag}-all"), &["ann", "bob", "cy", "dee"]);
    let only = store(&format!("{tag}-only"), persons);
    let filtered = answers(&all, Some(filter.clone()));
    let reference = answers(&only, None);
    for ((kind, got), (_, want)) in filtered.iter().zip(&reference) {
        assert_eq!(
            got, want,
            "{kind} with {filter:?} differs from a store of {persons:?}"
        );
    }
    // The filter did something: the unfiltered funnel counts other persons too.
    assert_ne!(
        answers(&all, None)[0],
        filtered[0],
        "{filter:?} changed nothing"
    );
}

#[test]
fn the_fixture_first_touches_are_as_described() {
    let all = store("touches", &["ann", "bob", "cy", "dee"]);
    let snap = all.project.snapshot();
    let snap = throughline_query::source::Source::from(&snap);
    let rules = Rules::ga4_default();
    let touch = |attribute| {
        let by_person =
            throughline_query::sessions::first_touch(&snap, &rules, None, None, attribute).unwrap();
        let mut values: Vec<String> = by_person.values().cloned().collect();
        values.sort();
        values
    };
    assert_eq!(
        touch("channel"),
        ["Direct", "Organic Social", "Paid Search", "Paid Search"]
    );
    assert_eq!(
        touch("campaign"),
        ["(not set)", "(not set)", "autumn", "spring"]
    );
}

#[test]
fn a_channel_filter_keeps_persons_whose_first_touch_is_that_channel() {
    // cy's first touch is social even though a later one is Paid Search.
    check(
        Filter {
            channel: Some("Paid Search".into()),
            campaign: None,
        },
        &["ann", "bob"],
        "channel",
    );
}

#[test]
fn a_campaign_filter_keeps_persons_whose_first_touch_is_that_campaign() {
    check(
        Filter {
            channel: None,
            campaign: Some("spring".into()),
        },
        &["ann"],
        "campaign",
    );
}

#[test]
fn channel_and_campaign_together_must_both_match() {
    check(
        Filter {
            channel: Some("Paid Search".into()),
            campaign: Some("autumn".into()),
        },
        &["bob"],
        "both",
    );
    check(
        Filter {
            channel: Some("Organic Social".into()),
            campaign: Some("spring".into()),
        },
        &[],
        "none",
    );
}

#[test]
fn not_set_picks_first_touches_without_a_campaign() {
    check(
        Filter {
            channel: None,
            campaign: Some("(not set)".into()),
        },
        &["cy", "dee"],
        "notset",
    );
}

#[test]
fn an_empty_filter_is_no_filter() {
    let all = store("empty", &["ann", "bob", "cy", "dee"]);
    assert_eq!(answers(&all, Some(Filter::default())), answers(&all, None));
}

#[test]
fn unknown_filter_fields_are_rejected() {
    let e = serde_json::from_value::<throughline_query::funnel::FunnelRequest>(
        json!({"steps": ["a"], "filter": {"chanel": "Email"}}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `chanel`"), "{e}");
}

#[test]
fn assets_count_each_rows_conversions_per_period() {
    use throughline_query::assets::{run, AssetsRequest};
    use throughline_query::trends::Interval;
    let all = store("interval", &["ann", "bob", "cy", "dee"]);
    let snap = all.project.snapshot();
    let snap = throughline_query::source::Source::from(&snap);
    let req = |from: Option<&str>, to: Option<&str>| AssetsRequest {
        conversion: "Order Completed".into(),
        window: "30d".into(),
        interval: Some(Interval::Day),
        from: from.map(str::to_string),
        to: to.map(str::to_string),
        ..Default::default()
    };
    let r = run(
        &snap,
        &Rules::ga4_default(),
        &Default::default(),
        &req(Some("2026-03-01"), Some("2026-04-01")),
    )
    .unwrap();
    let days = r.intervals.clone().unwrap();
    assert_eq!(days.len(), 31);
    assert_eq!(
        (days[0].as_str(), days[30].as_str()),
        ("2026-03-01", "2026-03-31")
    );
    let mut by_day = vec![0u64; 31];
    for row in &r.rows {
        let series = row.conversions_by_interval.as_ref().unwrap();
        assert_eq!(series.len(), 31);
        assert_eq!(
            series.iter().sum::<u64>(),
            row.scores.conversions,
            "{}",
            row.asset
        );
        for (d, n) in series.iter().enumerate() {
            by_day[d] += n;
        }
    }
    // Purchases on March 3 (bob), 5 (ann) and 9 (cy).
    let days_with: Vec<&str> = (0..31)
        .filter(|&d| by_day[d] > 0)
        .map(|d| days[d].as_str())
        .collect();
    assert_eq!(days_with, ["2026-03-03", "2026-03-05", "2026-03-09"]);
    // Without a range, the periods span the conversions.
    let r = run(
        &snap,
        &Rules::ga4_default(),
        &Default::default(),
        &req(None, None),
    )
    .unwrap();
    let days = r.intervals.unwrap();
    assert_eq!(
        (
            days.first().unwrap().as_str(),
            days.last().unwrap().as_str()
        ),
        ("2026-03-03", "2026-03-09")
    );
    // A range of more periods than the bound is refused, not allocated.
    let e = run(
        &snap,
        &Rules::ga4_default(),
        &Default::default(),
        &req(Some("1900-01-01"), Some("2026-04-01")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("periods"), "{e}");
}

#[test]
fn kept_first_touches_are_shared_until_events_arrive() {
    let rules = Rules::ga4_default();
    let channels = |s: &Store| {
        let snap = s.project.snapshot();
        let src = throughline_query::source::Source::from(&snap);
        throughline_query::sessions::first_touch(&src, &rules, None, None, "channel").unwrap()
    };
    let some = store("kept-some", &["ann", "bob"]);
    let before = channels(&some);
    assert_eq!(before.len(), 2);
    assert!(
        std::sync::Arc::ptr_eq(&before, &channels(&some)),
        "the same snapshot version reads the kept answer"
    );
    // cy and dee arrive: the next snapshot has a new version, and the answer is the one
    // a store that always had all four gives.
    let mut ids = IdGen::new(8);
    let late: Vec<_> = messages()
        .into_iter()
        .filter(|(u, _)| ["cy", "dee"].contains(u))
        .map(|(_, m)| normalize(m, &HISTORICAL, 1_900_000_000_000, &mut ids).unwrap())
        .collect();
    some.project.append(EventBatch::of(&late)).unwrap();
    let after = channels(&some);
    assert!(!std::sync::Arc::ptr_eq(&before, &after));
    let all = store("kept-all", &["ann", "bob", "cy", "dee"]);
    let sorted = |m: &std::collections::HashMap<u32, String>| {
        let mut v: Vec<String> = m.values().cloned().collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&after), sorted(&channels(&all)));
    assert_eq!(after.len(), 4);
    // And again once the appended events are flushed into a segment.
    some.project.flush().unwrap();
    let flushed = channels(&some);
    assert!(!std::sync::Arc::ptr_eq(&after, &flushed));
    assert_eq!(sorted(&flushed), sorted(&after));
    assert!(throughline_query::sessions::RECENT_FIRST_TOUCHES.len() <= 3);
}
