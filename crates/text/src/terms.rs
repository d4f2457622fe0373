//! Terms: the words of a text as term statistics count them. Lowercase runs of letters and
//! digits (any script), English stop words and pure numbers dropped, and a light plural
//! fold (`headphones` and `headphone` are one term) so an ad and its page that say the
//! same thing in singular and plural still match.

/// Common English function words, which carry no topic.
pub const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "even",
    "ever",
    "every",
    "few",
    "for",
    "from",
    "further",
    "get",
    "got",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "might",
    "mine",
    "must",
    "my",
    "myself",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "since",
    "so",
    "some",
    "still",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "us",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "it's",
    "i'm",
    "i've",
    "i'd",
    "i'll",
    "you're",
    "we're",
    "they're",
    "don't",
    "didn't",
    "doesn't",
    "isn't",
    "wasn't",
    "won't",
    "can't",
];

/// Terms of a text at most; the rest is ignored (texts here are comments and page copy).
pub const TERMS_PER_TEXT_MAX: usize = 2_000;

/// The terms of `text`, in order, repeats kept.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
    {
        if out.len() >= TERMS_PER_TEXT_MAX {
            break;
        }
        if raw.is_empty() {
            continue;
        }
        let w = raw.to_lowercase();
        if STOP_WORDS.contains(&w.as_str()) || w.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let w = w.strip_suffix("'s").map(str::to_string).unwrap_or(w);
        if w.chars().count() < 2 {
            continue;
        }
        out.push(fold_plural(w));
    }
    out
}

/// `headphones` -> `headphone`, `batteries` -> `battery`; leaves `glass`, `bus`, `is`.
fn fold_plural(w: String) -> String {
    // English plurals only: other scripts and accented words are left alone.
    if !w.is_ascii() {
        return w;
    }
    let n = w.len();
    if n > 4 && w.ends_with("ies") {
        return format!("{}y", &w[..w.len() - 3]);
    }
    if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") && !w.ends_with("is") {
        return w[..w.len() - 1].to_string();
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_drop_stop_words_numbers_and_fold_plurals() {
        assert_eq!(
            terms("The NEW Sonora headphones: 15% off, it's the best!"),
            ["new", "sonora", "headphone", "best"]
        );
        assert_eq!(terms("Batteries, glass, bus"), ["battery", "glass", "bus"]);
        assert_eq!(terms("Très bon son 👍"), ["très", "bon", "son"]);
        assert!(terms("").is_empty());
    }
}
