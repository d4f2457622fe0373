//! Prints one person's messages as JSON lines:
//! `cargo run --release -p throughline-demo --example person -- headphones 17`.

use throughline_demo::{labeled_messages, Brand, DemoConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brand = args
        .get(1)
        .and_then(|b| Brand::parse(b))
        .unwrap_or(Brand::Headphones);
    let person: usize = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
    let cfg = DemoConfig::new(brand, person + 1, 42);
    for (_, m) in labeled_messages(&cfg).filter(|(p, _)| *p == person) {
        println!("{m}");
    }
}
