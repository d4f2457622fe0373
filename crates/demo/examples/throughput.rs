//! Measures generation speed and prints what a data set contains:
//! `cargo run --release -p throughline-demo --example throughput -- headphones 200000`;
//! with `STATS=1` it also counts messages by type and name (which slows it down).

use std::collections::BTreeMap;
use std::time::Instant;

use throughline_demo::{messages, Brand, DemoConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brand = args
        .get(1)
        .and_then(|b| Brand::parse(b))
        .unwrap_or(Brand::Headphones);
    let persons = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let cfg = DemoConfig::new(brand, persons, 42);
    let started = Instant::now();
    let mut total = 0usize;
    let mut bytes = 0usize;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let stats = std::env::var_os("STATS").is_some();
    for m in messages(&cfg) {
        total += 1;
        if !stats {
            continue;
        }
        let kind = m["type"].as_str().unwrap_or_default();
        let name = m["event"]
            .as_str()
            .or(m["name"].as_str())
            .unwrap_or_default();
        *names.entry(format!("{kind} {name}")).or_default() += 1;
        if total.is_multiple_of(64) {
            bytes += serde_json::to_vec(&m).map_or(0, |v| v.len()) * 64;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    for (name, n) in &names {
        println!("{n:>10}  {name}");
    }
    if stats {
        println!(
            "~{:.0} JSON bytes per message",
            bytes as f64 / total.max(1) as f64
        );
    }
    println!(
        "{persons} persons, {total} messages ({:.1} per person), {secs:.2} s, {:.0} messages/s",
        total as f64 / persons as f64,
        total as f64 / secs
    );
}
