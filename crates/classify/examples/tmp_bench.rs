use throughline_classify::{Rules, Touch};
fn main() {
    let which: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let rules = Rules::ga4_default();
    let touches = [
        Touch {
            referrer: Some("https://www.google.co.uk/search?q=x"),
            page_url: Some("https://shop.example/p/1"),
            ..Touch::default()
        },
        Touch {
            referrer: Some("https://l.facebook.com/l.php?u=x"),
            page_url: Some("https://shop.example/p/1"),
            ..Touch::default()
        },
        Touch {
            utm_source: Some("newsletter"),
            utm_medium: Some("email"),
            utm_campaign: Some("spring sale"),
            ..Touch::default()
        },
        Touch {
            click_id: Some("gclid"),
            page_url: Some("https://shop.example/?gclid=abc"),
            ..Touch::default()
        },
        Touch {
            page_url: Some("https://shop.example/"),
            ..Touch::default()
        },
        Touch {
            referrer: Some("https://blog.example.org/post"),
            page_url: Some("https://shop.example/p/1"),
            ..Touch::default()
        },
        Touch {
            utm_source: Some("foo"),
            utm_medium: Some("bar"),
            utm_campaign: Some("spring sale"),
            ..Touch::default()
        },
    ];
    let mut sum = 0;
    for _ in 0..n {
        sum += rules.channel(std::hint::black_box(&touches[which])).len();
    }
    println!("{sum}");
}
