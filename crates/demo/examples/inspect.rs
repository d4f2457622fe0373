use std::collections::HashMap;
use throughline_demo::{labeled_messages, Brand, DemoConfig};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brand = Brand::parse(&args[1]).unwrap();
    let persons: usize = args[2].parse().unwrap();
    let cfg = DemoConfig::new(brand, persons, 42);
    let origin = brand.origin();
    let mut sessions = vec![0usize; persons];
    let mut msgs = vec![0usize; persons];
    let mut bounces = 0usize;
    let mut last_landing: Vec<Option<usize>> = vec![None; persons];
    let mut per_session_events: HashMap<usize, usize> = HashMap::new();
    let mut cur = 0usize;
    for (p, m) in labeled_messages(&cfg) {
        msgs[p] += 1;
        if m["type"] == "page" {
            let r = m["properties"]["referrer"].as_str().unwrap();
            if !r.starts_with(origin) {
                sessions[p] += 1;
                if cur == 1 {
                    bounces += 1;
                }
                *per_session_events.entry(cur.min(30)).or_default() += 1;
                cur = 0;
                let _ = last_landing[p];
                last_landing[p] = Some(1);
            }
        }
        if m.get("anonymousId").is_some() {
            cur += 1;
        }
    }
    let total_s: usize = sessions.iter().sum();
    let mut hist = [0usize; 12];
    for s in &sessions {
        hist[(*s).min(11)] += 1;
    }
    println!(
        "sessions/person {:.2}, bounce share {:.2}",
        total_s as f64 / persons as f64,
        bounces as f64 / total_s as f64
    );
    println!("sessions hist {:?}", hist);
    let mut mh = [0usize; 10];
    for m in &msgs {
        mh[(m / 10).min(9)] += 1;
    }
    println!("messages per person hist (by 10) {:?}", mh);
    let mut v: Vec<_> = per_session_events.into_iter().collect();
    v.sort();
    println!("device msgs per session {:?}", v);
}
