//! Free text: how it feels and what it is about.
//!
//! - [`vader`]: sentiment of short texts (survey comments, support messages) with VADER,
//!   a faithful port of the reference `vaderSentiment` 3.3.2, whose lexicons ship in
//!   `data/` under their MIT license. English only: other languages score near 0.
//! - [`tfidf`]: TF-IDF vectors and cosine similarity, for comparing an ad's copy with the
//!   landing page its clicks reach.
//! - [`terms`]: the tokenizer and stop words both of them use for term statistics.
//!
//! Pure functions of their input: no files, no clocks, no randomness.

pub mod terms;
pub mod tfidf;
pub mod vader;
