//! VADER sentiment: a rule-based model tuned on social-media text (Hutto & Gilbert,
//! ICWSM 2014), ported line by line from the reference Python `vaderSentiment` 3.3.2.
//!
//! Why a port and not the `vader_sentiment` crate: that crate follows an older release and
//! disagrees with the reference (it skips emoji descriptions after some characters, lacks
//! the "no" negation rules, matches booster words as substrings), so its compound scores
//! differ by up to 0.6 on ordinary sentences. This port keeps the reference's behaviour,
//! quirks included: `but` damps by the *first* earlier score equal to each score (the
//! reference's `list.index`), tokens of two characters keep their punctuation ("ok,"), and
//! so on, and the black-box tests compare compound scores with the PyPI package
//! (within 1e-3; the reference rounds its output to 4 decimals, this port does not round).
//!
//! The lexicons are the reference's files, compiled in (`data/`, MIT license), parsed once
//! on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

const B_INCR: f64 = 0.293;
const B_DECR: f64 = -0.293;
const C_INCR: f64 = 0.733;
const N_SCALAR: f64 = -0.74;

const NEGATE: [&str; 59] = [
    "aint",
    "arent",
    "cannot",
    "cant",
    "couldnt",
    "darent",
    "didnt",
    "doesnt",
    "ain't",
    "aren't",
    "can't",
    "couldn't",
    "daren't",
    "didn't",
    "doesn't",
    "dont",
    "hadnt",
    "hasnt",
    "havent",
    "isnt",
    "mightnt",
    "mustnt",
    "neither",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "isn't",
    "mightn't",
    "mustn't",
    "neednt",
    "needn't",
    "never",
    "none",
    "nope",
    "nor",
    "not",
    "nothing",
    "nowhere",
    "oughtnt",
    "shant",
    "shouldnt",
    "uhuh",
    "wasnt",
    "werent",
    "oughtn't",
    "shan't",
    "shouldn't",
    "uh-uh",
    "wasn't",
    "weren't",
    "without",
    "wont",
    "wouldnt",
    "won't",
    "wouldn't",
    "rarely",
    "seldom",
    "despite",
];

/// Degree adverbs that raise (`B_INCR`) or lower (`B_DECR`) the next words' intensity.
const BOOSTERS_UP: &[&str] = &[
    "absolutely",
    "amazingly",
    "awfully",
    "completely",
    "considerable",
    "considerably",
    "decidedly",
    "deeply",
    "effing",
    "enormous",
    "enormously",
    "entirely",
    "especially",
    "exceptional",
    "exceptionally",
    "extreme",
    "extremely",
    "fabulously",
    "flipping",
    "flippin",
    "frackin",
    "fracking",
    "fricking",
    "frickin",
    "frigging",
    "friggin",
    "fully",
    "fuckin",
    "fucking",
    "fuggin",
    "fugging",
    "greatly",
    "hella",
    "highly",
    "hugely",
    "incredible",
    "incredibly",
    "intensely",
    "major",
    "majorly",
    "more",
    "most",
    "particularly",
    "purely",
    "quite",
    "really",
    "remarkably",
    "so",
    "substantially",
    "thoroughly",
    "total",
    "totally",
    "tremendous",
    "tremendously",
    "uber",
    "unbelievably",
    "unusually",
    "utter",
    "utterly",
    "very",
];
const BOOSTERS_DOWN: &[&str] = &[
    "almost",
    "barely",
    "hardly",
    "just enough",
    "kind of",
    "kinda",
    "kindof",
    "kind-of",
    "less",
    "little",
    "marginal",
    "marginally",
    "occasional",
    "occasionally",
    "partly",
    "scarce",
    "scarcely",
    "slight",
    "slightly",
    "somewhat",
    "sort of",
    "sorta",
    "sortof",
    "sort-of",
];

/// Idioms and phrases containing lexicon words, with the valence they take instead.
const SPECIAL_CASES: [(&str, f64); 9] = [
    ("the shit", 3.0),
    ("the bomb", 3.0),
    ("bad ass", 1.5),
    ("badass", 1.5),
    ("bus stop", 0.0),
    ("yeah right", -2.0),
    ("kiss of death", -1.5),
    ("to die for", 3.0),
    ("beating heart", 3.5),
];

/// VADER's four scores of a text: the shares of positive, neutral and negative words, and
/// the normalized, weighted `compound` in [-1, 1] (the one number to use; by the authors'
/// convention `>= 0.05` is positive and `<= -0.05` negative).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores {
    pub neg: f64,
    pub neu: f64,
    pub pos: f64,
    pub compound: f64,
}

/// The authors' thresholds on `compound`.
pub const POSITIVE_MIN: f64 = 0.05;
pub const NEGATIVE_MAX: f64 = -0.05;

struct Lexicon {
    words: HashMap<String, f64>,
    emojis: HashMap<char, &'static str>,
    boosters: HashMap<&'static str, f64>,
}

fn lexicon() -> &'static Lexicon {
    static LEXICON: OnceLock<Lexicon> = OnceLock::new();
    LEXICON.get_or_init(|| {
        let mut words = HashMap::with_capacity(7600);
        for line in include_str!("../data/vader_lexicon.txt")
            .trim_end_matches('\n')
            .split('\n')
        {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split('\t');
            let (Some(word), Some(measure)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Ok(v) = measure.parse::<f64>() {
                words.insert(word.to_string(), v);
            }
        }
        // The reference looks emoji up one character at a time, so only single-character
        // entries can ever match.
        let mut emojis = HashMap::with_capacity(3600);
        for line in include_str!("../data/emoji_utf8_lexicon.txt")
            .trim_end_matches('\n')
            .split('\n')
        {
            let mut parts = line.trim().split('\t');
            let (Some(emoji), Some(description)) = (parts.next(), parts.next()) else {
                continue;
            };
            let mut chars = emoji.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                emojis.insert(c, description);
            }
        }
        let mut boosters = HashMap::new();
        for w in BOOSTERS_UP {
            boosters.insert(*w, B_INCR);
        }
        for w in BOOSTERS_DOWN {
            boosters.insert(*w, B_DECR);
        }
        Lexicon {
            words,
            emojis,
            boosters,
        }
    })
}

/// The valence the lexicon gives a lowercase word, if it has one.
pub fn word_valence(word_lower: &str) -> Option<f64> {
    lexicon().words.get(word_lower).copied()
}

/// Python's `str.isspace` for the characters `str.split()` splits on.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.isupper`: some cased character, and no lowercase one.
fn is_upper(s: &str) -> bool {
    s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)
}

/// The reference's `_strip_punc_if_word`: strips ASCII punctuation from both ends unless
/// what is left has two characters or fewer (an emoticon such as `:)`).
fn strip_punc_if_word(token: &str) -> &str {
    let stripped = token.trim_matches(|c: char| c.is_ascii_punctuation());
    if stripped.chars().count() <= 2 {
        token
    } else {
        stripped
    }
}

fn negated(word_lower: &str) -> bool {
    NEGATE.contains(&word_lower) || word_lower.contains("n't")
}

fn scalar_inc_dec(
    lex: &Lexicon,
    word: &str,
    word_lower: &str,
    valence: f64,
    cap_diff: bool,
) -> f64 {
    let Some(&b) = lex.boosters.get(word_lower) else {
        return 0.0;
    };
    let mut scalar = b;
    if valence < 0.0 {
        scalar *= -1.0;
    }
    if is_upper(word) && cap_diff {
        if valence > 0.0 {
            scalar += C_INCR;
        } else {
            scalar -= C_INCR;
        }
    }
    scalar
}

/// The sentiment of `text`.
pub fn polarity_scores(text: &str) -> Scores {
    let lex = lexicon();
    // Emoji become their descriptions ("😠" -> "angry face").
    let mut no_emoji = String::with_capacity(text.len());
    let mut prev_space = true;
    for ch in text.chars() {
        if let Some(description) = lex.emojis.get(&ch) {
            if !prev_space {
                no_emoji.push(' ');
            }
            no_emoji.push_str(description);
            prev_space = false;
        } else {
            no_emoji.push(ch);
            prev_space = ch == ' ';
        }
    }
    let text = no_emoji.trim_matches(is_py_space);
    let words: Vec<&str> = text
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .map(strip_punc_if_word)
        .collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    let uppers = words.iter().filter(|w| is_upper(w)).count();
    let cap_diff = words.len() - uppers > 0 && words.len() - uppers < words.len();

    let mut sentiments: Vec<f64> = Vec::with_capacity(words.len());
    for i in 0..words.len() {
        if lex.boosters.contains_key(lower[i].as_str())
            || (i + 1 < words.len() && lower[i] == "kind" && lower[i + 1] == "of")
        {
            sentiments.push(0.0);
            continue;
        }
        sentiments.push(valence_at(lex, &words, &lower, i, cap_diff));
    }
    but_check(&lower, &mut sentiments);
    score_valence(&sentiments, text)
}

fn valence_at(lex: &Lexicon, words: &[&str], lower: &[String], i: usize, cap_diff: bool) -> f64 {
    let Some(&base) = lex.words.get(&lower[i]) else {
        return 0.0;
    };
    let in_lexicon = |w: &str| lex.words.contains_key(w);
    let mut valence = base;
    // "no" negates the next lexicon word rather than scoring itself.
    if lower[i] == "no" && i != words.len() - 1 && in_lexicon(&lower[i + 1]) {
        valence = 0.0;
    }
    if (i > 0 && lower[i - 1] == "no")
        || (i > 1 && lower[i - 2] == "no")
        || (i > 2 && lower[i - 3] == "no" && (lower[i - 1] == "or" || lower[i - 1] == "nor"))
    {
        valence = base * N_SCALAR;
    }
    if is_upper(words[i]) && cap_diff {
        if valence > 0.0 {
            valence += C_INCR;
        } else {
            valence -= C_INCR;
        }
    }
    for start_i in 0..3 {
        if i > start_i && !in_lexicon(&lower[i - (start_i + 1)]) {
            let prev = i - (start_i + 1);
            let mut s = scalar_inc_dec(lex, words[prev], &lower[prev], valence, cap_diff);
            if start_i == 1 && s != 0.0 {
                s *= 0.95;
            }
            if start_i == 2 && s != 0.0 {
                s *= 0.9;
            }
            valence += s;
            valence = negation_check(valence, lower, start_i, i);
            if start_i == 2 {
                valence = special_idioms_check(lex, valence, lower, i);
            }
        }
    }
    least_check(lex, valence, lower, i)
}

fn negation_check(valence: f64, lw: &[String], start_i: usize, i: usize) -> f64 {
    let w = |k: usize| lw[i - k].as_str();
    match start_i {
        0 => {
            if negated(w(1)) {
                return valence * N_SCALAR;
            }
        }
        1 => {
            if w(2) == "never" && (w(1) == "so" || w(1) == "this") {
                return valence * 1.25;
            } else if w(2) == "without" && w(1) == "doubt" {
                return valence;
            } else if negated(w(2)) {
                return valence * N_SCALAR;
            }
        }
        _ => {
            // The reference's precedence: `a and (b or c) or (d or e)`.
            if (w(3) == "never" && (w(2) == "so" || w(2) == "this"))
                || (w(1) == "so" || w(1) == "this")
            {
                return valence * 1.25;
            } else if w(3) == "without" && (w(2) == "doubt" || w(1) == "doubt") {
                return valence;
            } else if negated(w(3)) {
                return valence * N_SCALAR;
            }
        }
    }
    valence
}

fn special_idioms_check(lex: &Lexicon, mut valence: f64, lw: &[String], i: usize) -> f64 {
    let special = |seq: &str| {
        SPECIAL_CASES
            .iter()
            .find(|(k, _)| *k == seq)
            .map(|(_, v)| *v)
    };
    let onezero = format!("{} {}", lw[i - 1], lw[i]);
    let twoonezero = format!("{} {} {}", lw[i - 2], lw[i - 1], lw[i]);
    let twoone = format!("{} {}", lw[i - 2], lw[i - 1]);
    let threetwoone = format!("{} {} {}", lw[i - 3], lw[i - 2], lw[i - 1]);
    let threetwo = format!("{} {}", lw[i - 3], lw[i - 2]);
    for seq in [&onezero, &twoonezero, &twoone, &threetwoone, &threetwo] {
        if let Some(v) = special(seq) {
            valence = v;
            break;
        }
    }
    if lw.len() - 1 > i {
        if let Some(v) = special(&format!("{} {}", lw[i], lw[i + 1])) {
            valence = v;
        }
    }
    if lw.len() - 1 > i + 1 {
        if let Some(v) = special(&format!("{} {} {}", lw[i], lw[i + 1], lw[i + 2])) {
            valence = v;
        }
    }
    for n_gram in [&threetwoone, &threetwo, &twoone] {
        if let Some(b) = lex.boosters.get(n_gram.as_str()) {
            valence += b;
        }
    }
    valence
}

fn least_check(lex: &Lexicon, valence: f64, lw: &[String], i: usize) -> f64 {
    let least = |k: usize| !lex.words.contains_key(&lw[i - k]) && lw[i - k] == "least";
    if i > 1 && least(1) {
        if lw[i - 2] != "at" && lw[i - 2] != "very" {
            return valence * N_SCALAR;
        }
    } else if i > 0 && least(1) {
        return valence * N_SCALAR;
    }
    valence
}

/// The contrastive `but`: words before it count half, words after it one and a half. As
/// the reference does it: each score is looked up by value (the first equal score), so
/// repeated scores are scaled at their first position.
fn but_check(lw: &[String], sentiments: &mut [f64]) {
    let Some(bi) = lw.iter().position(|w| w == "but") else {
        return;
    };
    for k in 0..sentiments.len() {
        let s = sentiments[k];
        let si = sentiments
            .iter()
            .position(|&x| x == s)
            .expect("the score is in the list");
        if si < bi {
            sentiments[si] = s * 0.5;
        } else if si > bi {
            sentiments[si] = s * 1.5;
        }
    }
}

fn score_valence(sentiments: &[f64], text: &str) -> Scores {
    if sentiments.is_empty() {
        return Scores::default();
    }
    let mut sum: f64 = sentiments.iter().sum();
    let ep = text.matches('!').count().min(4) as f64 * 0.292;
    let qm_count = text.matches('?').count();
    let qm = match qm_count {
        0 | 1 => 0.0,
        2 | 3 => qm_count as f64 * 0.18,
        _ => 0.96,
    };
    let amplifier = ep + qm;
    if sum > 0.0 {
        sum += amplifier;
    } else if sum < 0.0 {
        sum -= amplifier;
    }
    let compound = (sum / (sum * sum + 15.0).sqrt()).clamp(-1.0, 1.0);
    let (mut pos_sum, mut neg_sum, mut neu_count) = (0.0f64, 0.0f64, 0usize);
    for &s in sentiments {
        if s > 0.0 {
            pos_sum += s + 1.0;
        }
        if s < 0.0 {
            neg_sum += s - 1.0;
        }
        if s == 0.0 {
            neu_count += 1;
        }
    }
    if pos_sum > neg_sum.abs() {
        pos_sum += amplifier;
    } else if pos_sum < neg_sum.abs() {
        neg_sum -= amplifier;
    }
    let total = pos_sum + neg_sum.abs() + neu_count as f64;
    Scores {
        neg: (neg_sum / total).abs(),
        neu: (neu_count as f64 / total).abs(),
        pos: (pos_sum / total).abs(),
        compound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compound scores the reference `vaderSentiment` 3.3.2 gives (rounded to 4 decimals);
    /// the black-box suite compares many more with the package itself.
    #[test]
    fn compound_scores_match_the_reference() {
        let cases = [
            ("VADER is smart, handsome, and funny.", 0.8316),
            ("VADER is smart, handsome, and funny!", 0.8439),
            ("VADER is VERY SMART, handsome, and FUNNY!!!", 0.9342),
            ("VADER is not smart, handsome, nor funny.", -0.7424),
            ("At least it isn't a horrible book.", 0.431),
            ("The book was only kind of good.", 0.3832),
            (
                "The plot was good, but the characters are uncompelling and the dialog is not great.",
                -0.7042,
            ),
            ("Today only kinda sux! But I'll get by, lol", 0.5249),
            ("Catch utf-8 emoji such as 💘 and 💋 and 😁", 0.875),
            ("Not bad at all", 0.431),
            ("No problem, the delivery was great.", 0.7475),
            ("This is not so bad, but also not good", -0.2065),
            ("", 0.0),
            ("Le colis est arrivé.", 0.0),
        ];
        for (text, want) in cases {
            let got = polarity_scores(text).compound;
            assert!((got - want).abs() < 1e-3, "{text:?}: {got} vs {want}");
        }
    }

    #[test]
    fn shares_add_up_to_one() {
        let s = polarity_scores("Great sound, terrible app, okay battery.");
        assert!((s.pos + s.neu + s.neg - 1.0).abs() < 1e-9, "{s:?}");
        assert!(s.pos > 0.0 && s.neg > 0.0);
    }
}
