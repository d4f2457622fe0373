//! The column mapping that CSV and Parquet share: which column holds which field of a
//! Segment message. It owns both directions (an exported event to cells, imported cells to
//! a message) so that export followed by import gives back the same messages. It never
//! validates a message: that is `collect`'s job on the server.
//!
//! # The mapping
//!
//! Export writes these columns, in this order:
//!
//! | column              | holds                                                      |
//! |---------------------|------------------------------------------------------------|
//! | `messageId`         | the message id                                             |
//! | `type`              | `track`, `identify`, `page`, `screen`, `group` or `alias`  |
//! | `event`             | the event name of a `track`                                |
//! | `name`              | the page or screen name of a `page` or `screen`            |
//! | `userId`            | the user id                                                |
//! | `anonymousId`       | the anonymous id                                           |
//! | `previousId`        | the previous id of an `alias`                              |
//! | `groupId`           | the group id of a `group`                                  |
//! | `timestamp`         | the event time: ISO-8601 text in CSV, a Parquet timestamp  |
//! | `originalTimestamp` | the client's timestamp as it was sent (ISO-8601)           |
//! | `sentAt`            | when the client sent it (ISO-8601)                         |
//! | `receivedAt`        | when the server received it (ISO-8601)                     |
//! | `person_id`         | the stitched person the event belongs to                   |
//! | `properties`        | the `properties` object as JSON text                       |
//! | `context`           | the `context` object as JSON text                          |
//! | `traits`            | the `traits` object as JSON text                           |
//!
//! Every column is text except the Parquet `timestamp`, an `INT64 TIMESTAMP(MILLIS, UTC)`.
//!
//! Import reads the same columns, in any order, with these rules:
//!
//! - every column is optional; an empty cell (or a Parquet null) is an absent field;
//! - `person_id` and `receivedAt` are ignored: the server computes them;
//! - `properties.X` and `traits.X` set the field `X` of that object (`X` is the whole rest
//!   of the name, dots included); `context.X.Y` sets `context.X.Y`, one level per dot
//!   (`context.page.url`, `context.campaign.source`). The cell is taken as a JSON number
//!   or boolean when it reads as one (`42`, `4.5`, `true`), else as a string; an integer
//!   too large for 64 bits stays a string so that no digit is lost. These columns are set
//!   after the whole-object columns, so `properties.plan` overrides `plan` in `properties`;
//! - any other column name is an error for the whole file, before any row is read, so that
//!   a misspelt column never drops data silently;
//! - in Parquet, `timestamp` (and `originalTimestamp`, `sentAt`) may be a timestamp of any
//!   unit, a plain `INT64` of milliseconds since the epoch, or ISO-8601 text; typed
//!   columns (numbers, booleans, structs, lists) keep their JSON type.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};
use throughline_model::format_ms;

use crate::{ExportRow, FormatError, RowError};

/// The exported columns, in order.
pub const COLUMNS: [&str; 16] = [
    "messageId",
    "type",
    "event",
    "name",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "person_id",
    "properties",
    "context",
    "traits",
];

/// Where `timestamp` sits in [`COLUMNS`]: Parquet writes it as a typed timestamp.
pub(crate) const TIMESTAMP_COLUMN: usize = 8;

/// The top-level text fields an import copies into the message as they are.
const TEXT_FIELDS: [&str; 11] = [
    "messageId",
    "type",
    "event",
    "name",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
];

/// The top-level text fields that hold a time, so a typed Parquet time becomes ISO-8601.
pub(crate) const TIME_FIELDS: [&str; 3] = ["timestamp", "originalTimestamp", "sentAt"];

/// Columns the server computes itself; import drops them (JSONL included).
pub(crate) const SERVER_FIELDS: [&str; 2] = ["person_id", "receivedAt"];

const OBJECT_FIELDS: [&str; 3] = ["properties", "context", "traits"];

/// Bounds the header of an imported file; real files have a few dozen columns.
pub const COLUMNS_MAX: usize = 4096;

/// The cells of one exported row in [`COLUMNS`] order, `None` for an empty cell.
///
/// Built from `Event::to_segment_json` so the files hold exactly the Segment message
/// that JSONL export writes and that import gives back.
pub(crate) fn export_cells(row: &ExportRow<'_>) -> [Option<String>; 16] {
    let mut message = row.event.to_segment_json();
    COLUMNS.map(|column| {
        if column == "person_id" {
            return Some(row.person_id.to_string());
        }
        match message.remove(column) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text),
            Some(other) => Some(other.to_string()),
        }
    })
}

/// Where one column of an imported file goes in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A top-level text field: `userId`, `timestamp`...
    Text(&'static str),
    /// `properties`, `context` or `traits` as the JSON text of the whole object.
    Object(&'static str),
    /// One field inside `properties`, `traits` or `context`.
    Nested {
        root: &'static str,
        path: Vec<String>,
    },
    /// `person_id` and `receivedAt`.
    Ignored,
}

impl Target {
    fn of(column: &str) -> Option<Target> {
        if let Some(field) = TEXT_FIELDS.into_iter().find(|f| *f == column) {
            return Some(Target::Text(field));
        }
        if SERVER_FIELDS.contains(&column) {
            return Some(Target::Ignored);
        }
        if let Some(field) = OBJECT_FIELDS.into_iter().find(|f| *f == column) {
            return Some(Target::Object(field));
        }
        let (root, rest) = column.split_once('.')?;
        let root = OBJECT_FIELDS.into_iter().find(|f| *f == root)?;
        let path: Vec<String> = if root == "context" {
            rest.split('.').map(str::to_string).collect()
        } else {
            vec![rest.to_string()]
        };
        if path.iter().any(String::is_empty) {
            return None;
        }
        Some(Target::Nested { root, path })
    }
}

/// One imported cell, before the mapping puts it in place.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell<'a> {
    Empty,
    /// Text as a CSV cell or a Parquet string holds it.
    Text(Cow<'a, str>),
    /// A typed Parquet value: a number, a boolean, a struct or a list.
    Typed(Value),
    /// A typed Parquet time, in milliseconds since the epoch.
    Millis(i64),
}

/// The targets of an imported file's columns, resolved once from its header.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    columns: Vec<(String, Target)>,
}

impl Plan {
    pub(crate) fn new<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
    ) -> Result<Plan, FormatError> {
        let mut columns: Vec<(String, Target)> = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            if columns.len() == COLUMNS_MAX {
                return Err(FormatError::TooManyColumns(COLUMNS_MAX));
            }
            if columns.iter().any(|(seen, _)| seen == name) {
                return Err(FormatError::DuplicateColumn(name.to_string()));
            }
            let target =
                Target::of(name).ok_or_else(|| FormatError::UnknownColumn(name.to_string()))?;
            columns.push((name.to_string(), target));
        }
        Ok(Plan { columns })
    }

    pub(crate) fn len(&self) -> usize {
        self.columns.len()
    }

    pub(crate) fn name(&self, index: usize) -> &str {
        &self.columns[index].0
    }

    pub(crate) fn target(&self, index: usize) -> &Target {
        &self.columns[index].1
    }

    /// Puts one row's cells, in column order, into a Segment message.
    pub(crate) fn message<'a>(
        &self,
        cells: impl IntoIterator<Item = Cell<'a>>,
    ) -> Result<Value, RowError> {
        let mut message = Map::new();
        let mut nested = Vec::new();
        for ((column, target), cell) in self.columns.iter().zip(cells) {
            let cell = match cell {
                Cell::Text(text) if text.is_empty() => continue,
                Cell::Empty | Cell::Typed(Value::Null) => continue,
                cell => cell,
            };
            match target {
                Target::Ignored => {}
                Target::Text(field) => {
                    let text = match cell {
                        Cell::Text(text) => text.into_owned(),
                        Cell::Typed(Value::String(text)) => text,
                        Cell::Typed(value) => value.to_string(),
                        Cell::Millis(ms) => format_ms(ms),
                        Cell::Empty => continue,
                    };
                    message.insert(field.to_string(), Value::String(text));
                }
                Target::Object(field) => {
                    let value = match cell {
                        Cell::Text(text) => serde_json::from_str::<Value>(&text)
                            .map_err(|e| RowError::column(column, format!("invalid json: {e}")))?,
                        Cell::Typed(value) => value,
                        Cell::Millis(_) => Value::Null,
                        Cell::Empty => continue,
                    };
                    if !value.is_object() {
                        let found = kind(&value);
                        return Err(RowError::column(
                            column,
                            format!("expected a json object, found {found}"),
                        ));
                    }
                    message.insert(field.to_string(), value);
                }
                Target::Nested { root, path } => {
                    let value = match cell {
                        Cell::Text(text) => scalar(&text),
                        Cell::Typed(value) => value,
                        Cell::Millis(ms) => Value::String(format_ms(ms)),
                        Cell::Empty => continue,
                    };
                    nested.push((column, *root, path, value));
                }
            }
        }
        // After the whole objects, so a single field refines the object it belongs to.
        for (column, root, path, value) in nested {
            set_path(&mut message, root, path, value).map_err(|e| RowError::column(column, e))?;
        }
        Ok(Value::Object(message))
    }
}

/// A cell of a `properties.X` column: a JSON number or boolean when it reads as one.
pub(crate) fn scalar(text: &str) -> Value {
    match text {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let numeric = text
        .bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
        && text.trim() == text;
    if numeric {
        if let Ok(number) = serde_json::from_str::<Number>(text) {
            // An integer past 64 bits parses as a float: keep its digits as text instead.
            let integer_literal = !text.contains(['.', 'e', 'E']);
            if !(number.is_f64() && integer_literal) {
                return Value::Number(number);
            }
        }
    }
    Value::String(text.to_string())
}

fn set_path(
    message: &mut Map<String, Value>,
    root: &str,
    path: &[String],
    value: Value,
) -> Result<(), String> {
    let mut object = message
        .entry(root.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    let mut walked = root.to_string();
    let (last, parents) = path.split_last().expect("a nested target has a path");
    for key in parents {
        let map = object
            .as_object_mut()
            .ok_or_else(|| format!("{walked} is not an object"))?;
        object = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        walked.push('.');
        walked.push_str(key);
    }
    let map = object
        .as_object_mut()
        .ok_or_else(|| format!("{walked} is not an object"))?;
    map.insert(last.clone(), value);
    Ok(())
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(header: &[&str], cells: &[&str]) -> Result<Value, RowError> {
        let plan = Plan::new(header).unwrap();
        plan.message(cells.iter().map(|c| Cell::Text(Cow::Borrowed(*c))))
    }

    #[test]
    fn scalars_read_as_numbers_and_booleans_when_they_are() {
        assert_eq!(scalar("42"), json!(42));
        assert_eq!(scalar("-4.5"), json!(-4.5));
        assert_eq!(scalar("1e3"), json!(1000.0));
        assert_eq!(scalar("true"), json!(true));
        assert_eq!(scalar("007"), json!("007"));
        assert_eq!(scalar(" 42"), json!(" 42"));
        assert_eq!(scalar("null"), json!("null"));
        assert_eq!(scalar("NaN"), json!("NaN"));
        assert_eq!(scalar("plan-b"), json!("plan-b"));
        // Regression: a 20-digit id must not come back as a rounded float.
        assert_eq!(
            scalar("12345678901234567890123"),
            json!("12345678901234567890123")
        );
    }

    #[test]
    fn nested_columns_refine_the_whole_objects() {
        let got = message(
            &[
                "context.page.url",
                "properties",
                "properties.plan",
                "properties.a.b",
                "traits.age",
                "type",
                "person_id",
                "receivedAt",
                "userId",
            ],
            &[
                "https://x.test/",
                r#"{"plan":"free","seats":2}"#,
                "pro",
                "1",
                "",
                "track",
                "p-1",
                "2024-01-01T00:00:00Z",
                "u1",
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            json!({
                "context": {"page": {"url": "https://x.test/"}},
                "properties": {"plan": "pro", "seats": 2, "a.b": 1},
                "type": "track",
                "userId": "u1",
            })
        );
    }

    #[test]
    fn a_nested_column_under_a_non_object_names_its_column() {
        let err = message(
            &["context", "context.page.url"],
            &[r#"{"page":"home"}"#, "x"],
        );
        assert_eq!(
            err,
            Err(RowError::column(
                "context.page.url",
                "context.page is not an object"
            ))
        );
    }

    #[test]
    fn whole_object_columns_must_hold_objects() {
        let err = message(&["traits"], &["[1]"]).unwrap_err();
        assert_eq!(
            err,
            RowError::column("traits", "expected a json object, found an array")
        );
    }

    #[test]
    fn unknown_and_duplicate_columns_fail_the_file() {
        for bad in ["user_id", "properties.", "context..x", "props.x", ""] {
            assert!(
                matches!(Plan::new([bad]), Err(FormatError::UnknownColumn(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Plan::new(["userId", "userId"]),
            Err(FormatError::DuplicateColumn(_))
        ));
        assert!(Plan::new(COLUMNS).is_ok());
    }
}
