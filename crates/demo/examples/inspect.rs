use std::collections::BTreeMap;
use throughline_demo::{labeled_messages, Brand, DemoConfig};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brand = Brand::parse(&args[1]).unwrap();
    let persons: usize = args[2].parse().unwrap();
    let seed: u64 = args.get(3).map_or(42, |s| s.parse().unwrap());
    let cfg = DemoConfig::new(brand, persons, seed);
    let mut hist: BTreeMap<(String, String), [usize; 11]> = BTreeMap::new();
    let mut comments: BTreeMap<String, usize> = BTreeMap::new();
    for (_, m) in labeled_messages(&cfg) {
        if m["event"] == "Survey Responded" {
            let p = &m["properties"];
            let k = (
                p["survey"].as_str().unwrap().to_string(),
                p["stage"].as_str().unwrap().to_string(),
            );
            hist.entry(k).or_default()[p["score"].as_i64().unwrap() as usize] += 1;
            if let Some(c) = p["comment"].as_str() {
                *comments.entry(format!("{} {c}", p["score"])).or_default() += 1;
            }
        }
    }
    for (k, h) in hist {
        println!("{k:?} {h:?}");
    }
    for (c, n) in comments.iter().take(60) {
        println!("{n:>5} {c}");
    }
}
