//! TF-IDF vectors and their cosine similarity: how much two texts are about the same
//! thing, with words that every text uses (the brand name) counting little.
//!
//! Weights follow scikit-learn's `TfidfVectorizer(sublinear_tf=True, smooth_idf=True)`:
//! `tf = 1 + ln(count)`, `idf = ln((1 + n) / (1 + df)) + 1` over the corpus's `n`
//! documents, vectors L2-normalized, so the cosine is a dot product in [0, 1].

use std::collections::HashMap;

use crate::terms::terms;

/// Document frequencies of a corpus: in how many of its texts each term occurs.
#[derive(Clone, Debug, Default)]
pub struct Corpus {
    df: HashMap<String, u32>,
    docs: u32,
}

/// A normalized TF-IDF vector, sorted by term.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vector(Vec<(String, f64)>);

impl Corpus {
    pub fn new() -> Corpus {
        Corpus::default()
    }

    /// Counts one document.
    pub fn add(&mut self, text: &str) {
        let mut seen: Vec<String> = terms(text);
        seen.sort();
        seen.dedup();
        for t in seen {
            *self.df.entry(t).or_default() += 1;
        }
        self.docs += 1;
    }

    pub fn documents(&self) -> u32 {
        self.docs
    }

    pub fn idf(&self, term: &str) -> f64 {
        let df = self.df.get(term).copied().unwrap_or(0) as f64;
        ((1.0 + self.docs as f64) / (1.0 + df)).ln() + 1.0
    }

    /// The vector of `text` under this corpus's document frequencies.
    pub fn vector(&self, text: &str) -> Vector {
        let mut counts: HashMap<String, u32> = HashMap::new();
        for t in terms(text) {
            *counts.entry(t).or_default() += 1;
        }
        let mut v: Vec<(String, f64)> = counts
            .into_iter()
            .map(|(t, c)| {
                let w = (1.0 + (c as f64).ln()) * self.idf(&t);
                (t, w)
            })
            .collect();
        // Sorted before summing: the norm must not depend on the hash map's order, which
        // differs between processes, or the same texts would score a last bit apart.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let norm = v.iter().map(|(_, w)| w * w).sum::<f64>().sqrt();
        if norm > 0.0 {
            for (_, w) in &mut v {
                *w /= norm;
            }
        }
        Vector(v)
    }
}

impl Vector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Cosine similarity: 0 for no shared term (or an empty text), 1 for the same terms in
    /// the same proportions.
    pub fn cosine(&self, other: &Vector) -> f64 {
        let (a, b) = (&self.0, &other.0);
        let (mut i, mut j, mut dot) = (0, 0, 0.0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    dot += a[i].1 * b[j].1;
                    i += 1;
                    j += 1;
                }
            }
        }
        dot.clamp(0.0, 1.0)
    }

    /// The terms both vectors share, heaviest first: why two texts match.
    pub fn shared_terms(&self, other: &Vector, max: usize) -> Vec<String> {
        let theirs: HashMap<&str, f64> = other.0.iter().map(|(t, w)| (t.as_str(), *w)).collect();
        let mut shared: Vec<(&str, f64)> = self
            .0
            .iter()
            .filter_map(|(t, w)| theirs.get(t.as_str()).map(|x| (t.as_str(), w * x)))
            .collect();
        shared.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        shared
            .into_iter()
            .take(max)
            .map(|(t, _)| t.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idf_and_cosine_follow_the_formulas() {
        let mut c = Corpus::new();
        for t in [
            "quiet commute sonora",
            "studio pro sonora",
            "winter boots sale",
        ] {
            c.add(t);
        }
        // "sonora" is in 2 of 3 documents: ln(4/3) + 1.
        assert!((c.idf("sonora") - ((4.0f64 / 3.0).ln() + 1.0)).abs() < 1e-12);
        assert!((c.idf("unseen") - (4.0f64.ln() + 1.0)).abs() < 1e-12);
        let a = c.vector("Silence your commute: the quiet Sonora");
        let b = c.vector("Quiet commute — Sonora");
        let z = c.vector("Winter boots, 50% off");
        assert!(a.cosine(&b) > 0.6, "{}", a.cosine(&b));
        assert_eq!(a.cosine(&z), 0.0);
        assert!((b.cosine(&b) - 1.0).abs() < 1e-12);
        assert_eq!(Vector::default().cosine(&b), 0.0);
        // Hand computation: b = {quiet, commute, sonora} with idf q = c = ln2 + 1, s = ln(4/3) + 1;
        // a adds "silence" (idf ln4 + 1), all counts 1.
        let (q, s, si) = (2f64.ln() + 1.0, (4f64 / 3.0).ln() + 1.0, 4f64.ln() + 1.0);
        let dot = 2.0 * q * q + s * s;
        let want = dot / ((2.0 * q * q + s * s).sqrt() * (2.0 * q * q + s * s + si * si).sqrt());
        assert!((a.cosine(&b) - want).abs() < 1e-12);
        assert_eq!(a.shared_terms(&b, 2), ["commute", "quiet"]);
    }
}
