//! Marketing spend: cost per day and channel, source, medium, campaign or asset, imported
//! from CSV and kept in `DIR/projects/NAME/spend.csv`, so attribution rows can show cost,
//! cost per conversion and return on ad spend.
//!
//! A row is keyed by its date and dimension values; importing a row whose key exists
//! replaces its cost, so re-importing an ad platform's export never counts it twice.
//! This module never writes anything but the spend file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::QueryError;

/// The spend file in a project's directory.
pub const SPEND_FILE: &str = "spend.csv";
/// Rows kept at most (a year of a thousand campaigns a day is 365k).
pub const SPEND_ROWS_MAX: usize = 2_000_000;
/// Bytes of one imported file at most.
pub const SPEND_FILE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Errors listed before the rest are counted.
const ERRORS_LISTED_MAX: usize = 20;

/// The dimension columns, in file order.
pub const DIMENSIONS: [&str; 5] = ["channel", "source", "medium", "campaign", "asset"];

/// Date and dimension values (empty: not given) of a row.
type Key = (NaiveDate, [String; 5]);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spend {
    rows: BTreeMap<Key, f64>,
}

impl Spend {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Parses CSV with a header naming `date`, `cost` and any of [`DIMENSIONS`]
    /// (`content` is read as `asset`; `currency` is allowed and ignored). Dates are
    /// `YYYY-MM-DD`; costs are non-negative numbers. `source` names the file in errors.
    pub fn from_csv(text: &str, source: &str) -> Result<Spend, QueryError> {
        if text.len() > SPEND_FILE_BYTES_MAX {
            return Err(QueryError::invalid(format!(
                "{source}: a spend file is at most {} MB",
                SPEND_FILE_BYTES_MAX >> 20
            )));
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(text.as_bytes());
        let header = reader
            .headers()
            .map_err(|e| QueryError::invalid(format!("{source}: {e}")))?
            .clone();
        let (mut date, mut cost) = (None, None);
        let mut dims: [Option<usize>; 5] = [None; 5];
        for (i, h) in header.iter().enumerate() {
            let h = h.to_ascii_lowercase();
            match h.as_str() {
                "date" | "day" => date = Some(i),
                "cost" | "spend" => cost = Some(i),
                "currency" => {}
                "content" => dims[4] = Some(i),
                other => match DIMENSIONS.iter().position(|d| *d == other) {
                    Some(d) => dims[d] = Some(i),
                    None => {
                        return Err(QueryError::invalid(format!(
                            "{source}: unknown column {other:?}: use date, cost and any of {}",
                            DIMENSIONS.join(", ")
                        )))
                    }
                },
            }
        }
        let (Some(date), Some(cost)) = (date, cost) else {
            return Err(QueryError::invalid(format!(
                "{source}: the header must name `date` and `cost` columns"
            )));
        };
        if dims.iter().all(Option::is_none) {
            return Err(QueryError::invalid(format!(
                "{source}: name at least one of {} so cost can be matched to touches",
                DIMENSIONS.join(", ")
            )));
        }
        let mut spend = Spend::default();
        let mut errors: Vec<String> = Vec::new();
        let mut error_count = 0usize;
        for (n, record) in reader.records().enumerate() {
            let line = n + 2;
            let mut fail = |msg: String| {
                error_count += 1;
                if errors.len() < ERRORS_LISTED_MAX {
                    errors.push(format!("{source}:{line}: {msg}"));
                }
            };
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    fail(e.to_string());
                    continue;
                }
            };
            let day = match NaiveDate::parse_from_str(&record[date], "%Y-%m-%d") {
                Ok(d) => d,
                Err(_) => {
                    fail(format!("invalid date {:?}: use YYYY-MM-DD", &record[date]));
                    continue;
                }
            };
            let amount: f64 = match record[cost].parse() {
                Ok(v) if f64::is_finite(v) && v >= 0.0 => v,
                _ => {
                    fail(format!(
                        "invalid cost {:?}: a non-negative number",
                        &record[cost]
                    ));
                    continue;
                }
            };
            let values: [String; 5] =
                std::array::from_fn(|d| dims[d].map_or(String::new(), |i| record[i].to_string()));
            *spend.rows.entry((day, values)).or_default() += amount;
            if spend.rows.len() > SPEND_ROWS_MAX {
                return Err(QueryError::invalid(format!(
                    "{source}: more than {SPEND_ROWS_MAX} spend rows"
                )));
            }
        }
        if error_count > 0 {
            let mut msg = errors.join("\n");
            if error_count > errors.len() {
                msg.push_str(&format!(
                    "\n... and {} more errors",
                    error_count - errors.len()
                ));
            }
            return Err(QueryError::invalid(msg));
        }
        Ok(spend)
    }

    /// Adds `other`'s rows, replacing the cost of rows with the same key. Returns how many
    /// rows were new and how many replaced.
    pub fn merge(&mut self, other: Spend) -> Result<(usize, usize), QueryError> {
        let (mut added, mut replaced) = (0, 0);
        for (k, v) in other.rows {
            match self.rows.insert(k, v) {
                Some(_) => replaced += 1,
                None => added += 1,
            }
        }
        if self.rows.len() > SPEND_ROWS_MAX {
            return Err(QueryError::invalid(format!(
                "more than {SPEND_ROWS_MAX} spend rows in the project"
            )));
        }
        Ok((added, replaced))
    }

    /// The project's spend, empty when it has none.
    pub fn load(project_dir: &Path) -> Result<Spend, QueryError> {
        match crate::project_file::read(project_dir, SPEND_FILE)? {
            Some(text) => {
                Spend::from_csv(&text, &project_dir.join(SPEND_FILE).display().to_string())
            }
            None => Ok(Spend::default()),
        }
    }

    /// Writes the spend file atomically (temp file, fsync, rename).
    pub fn save(&self, project_dir: &Path) -> Result<PathBuf, QueryError> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let io = |e: csv::Error| QueryError::invalid(format!("writing spend: {e}"));
        let mut header = vec!["date"];
        header.extend(DIMENSIONS);
        header.push("cost");
        w.write_record(&header).map_err(io)?;
        for ((day, dims), cost) in &self.rows {
            let mut rec = vec![day.format("%Y-%m-%d").to_string()];
            rec.extend(dims.iter().cloned());
            rec.push(format!("{cost:.4}"));
            w.write_record(&rec).map_err(io)?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| QueryError::invalid(format!("writing spend: {e}")))?;
        crate::project_file::write(project_dir, SPEND_FILE, &bytes)
    }

    /// Cost per value of a dimension (`channel`, `source`, `medium`, `source_medium`,
    /// `campaign`, `asset` or `content`) over days in `[from, to)`, and the cost of rows
    /// without a value for it. `None` when no row names the dimension.
    pub fn cost_by(
        &self,
        by: &str,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Option<(BTreeMap<String, f64>, f64)> {
        let value = |dims: &[String; 5]| -> String {
            match by {
                "source_medium" if !dims[1].is_empty() && !dims[2].is_empty() => {
                    format!("{} / {}", dims[1], dims[2])
                }
                "source_medium" => String::new(),
                "content" => dims[4].clone(),
                d => DIMENSIONS
                    .iter()
                    .position(|x| *x == d)
                    .map_or(String::new(), |i| dims[i].clone()),
            }
        };
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        let mut unkeyed = 0.0;
        for ((day, dims), cost) in &self.rows {
            if from.is_some_and(|f| *day < f) || to.is_some_and(|t| *day >= t) {
                continue;
            }
            let v = value(dims);
            if v.is_empty() {
                unkeyed += cost;
            } else {
                *out.entry(v).or_default() += cost;
            }
        }
        let named = self.rows.keys().any(|(_, dims)| !value(dims).is_empty());
        named.then_some((out, unkeyed))
    }

    /// Total cost per value of each dimension, for listing.
    pub fn totals(&self) -> Vec<(String, String, f64)> {
        let mut out: BTreeMap<(String, String), f64> = BTreeMap::new();
        for ((_, dims), cost) in &self.rows {
            for (d, v) in DIMENSIONS.iter().zip(dims) {
                if !v.is_empty() {
                    *out.entry((d.to_string(), v.clone())).or_default() += cost;
                }
            }
        }
        out.into_iter().map(|((d, v), c)| (d, v, c)).collect()
    }

    /// The first and last day with spend.
    pub fn date_range(&self) -> Option<(NaiveDate, NaiveDate)> {
        Some((self.rows.keys().next()?.0, self.rows.keys().next_back()?.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn costs_sum_by_dimension_and_date_range() {
        let s = Spend::from_csv(
            "date,channel,source,medium,campaign,cost\n\
             2026-09-01,Paid Search,google,cpc,brand,10\n\
             2026-09-01,Paid Search,google,cpc,generic,5.5\n\
             2026-09-02,Paid Social,facebook,paid_social,launch,7\n\
             2026-09-03,Paid Search,google,cpc,brand,1\n",
            "t.csv",
        )
        .unwrap();
        let (by, none) = s.cost_by("channel", None, None).unwrap();
        assert_eq!(by["Paid Search"], 16.5);
        assert_eq!(by["Paid Social"], 7.0);
        assert_eq!(none, 0.0);
        let (by, _) = s
            .cost_by("campaign", Some(day("2026-09-01")), Some(day("2026-09-03")))
            .unwrap();
        assert_eq!(by["brand"], 10.0);
        assert_eq!(by["launch"], 7.0);
        let (by, _) = s.cost_by("source_medium", None, None).unwrap();
        assert_eq!(by["google / cpc"], 16.5);
        assert!(
            s.cost_by("asset", None, None).is_none(),
            "no row names an asset"
        );
    }

    #[test]
    fn reimporting_replaces_instead_of_adding() {
        let text = "date,campaign,cost\n2026-09-01,brand,10\n";
        let mut s = Spend::from_csv(text, "a").unwrap();
        let again = Spend::from_csv(
            "date,campaign,cost\n2026-09-01,brand,12\n2026-09-02,brand,1\n",
            "b",
        )
        .unwrap();
        assert_eq!(s.merge(again).unwrap(), (1, 1));
        assert_eq!(s.cost_by("campaign", None, None).unwrap().0["brand"], 13.0);
    }

    #[test]
    fn bad_rows_are_listed_with_line_numbers() {
        let err = Spend::from_csv(
            "date,channel,cost\n2026-13-01,Email,1\n2026-09-01,Email,-3\n",
            "s.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("s.csv:2: invalid date"), "{err}");
        assert!(err.contains("s.csv:3: invalid cost"), "{err}");
        let err = Spend::from_csv("date,region,cost\n", "s.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column \"region\""), "{err}");
        let err = Spend::from_csv("date,cost\n", "s.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one of"), "{err}");
    }
}
