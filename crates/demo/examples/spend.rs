//! Prints the spend CSV of a data set:
//! `cargo run --release -p throughline-demo --example spend -- headphones 20000`.

use throughline_demo::{spend_csv, Brand, DemoConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brand = args
        .get(1)
        .and_then(|b| Brand::parse(b))
        .unwrap_or(Brand::Headphones);
    let persons = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20_000);
    print!("{}", spend_csv(&DemoConfig::new(brand, persons, 42)));
}
