//! The rules file: TOML in, compiled [`Rules`] out, or an error naming what is wrong.
//!
//! A file either replaces the defaults (`replace_defaults = true`, as the shipped file does)
//! or extends them: its channels go before the defaults (`position = "first"`, the default),
//! after them (`"last"`) or next to one (`before = "Referral"`); its source lists, search
//! engines and referral exclusions add to the defaults; its click ids add or override.
//! Unknown keys are errors, so a typo cannot silently disable a rule.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::{Table, Value};

use crate::matcher::{FastMap, Field, Guarded, HostIndex, HostPattern, Op, Test};
use crate::rules::{Channel, ClickIdRule, Rules};
use crate::{ga4_default_toml, url, ClassifyError};

/// Largest rules file accepted. The shipped one is about 20 KiB.
pub const RULES_TOML_BYTES_MAX: usize = 1024 * 1024;
/// Most channel rules in one rule set (each costs a little on every touch).
pub const CHANNELS_MAX: usize = 256;
/// Most source categories: a source's categories are a 64-bit set.
pub const CATEGORIES_MAX: usize = 64;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    replace_defaults: bool,
    unassigned: Option<String>,
    #[serde(default)]
    referral_exclusions: Vec<String>,
    #[serde(default)]
    click_ids: BTreeMap<String, ClickIdSpec>,
    #[serde(default)]
    search_engines: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    sources: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    channel: Vec<Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClickIdSpec {
    source: String,
    medium: String,
}

/// A channel as written: its name, where it goes, its condition groups (still TOML; they
/// are compiled once every source category is known).
struct ChannelSpec {
    name: String,
    placement: Option<Placement>,
    groups: Vec<Table>,
}

enum Placement {
    First,
    Last,
    Before(String),
    After(String),
}

impl Rules {
    /// Compiles a rules file. Without `replace_defaults = true` the file extends
    /// [`Rules::ga4_default`]; an empty file is the defaults.
    pub fn from_toml(text: &str) -> Result<Rules, ClassifyError> {
        if text.len() > RULES_TOML_BYTES_MAX {
            return Err(ClassifyError::TooLarge {
                bytes: text.len(),
                max_bytes: RULES_TOML_BYTES_MAX,
            });
        }
        let file: FileSpec = toml::from_str(text)?;
        let own_channels = file
            .channel
            .iter()
            .enumerate()
            .map(|(i, table)| channel_spec(table, i))
            .collect::<Result<Vec<_>, _>>()?;
        if file.replace_defaults {
            if let Some(c) = own_channels.iter().find(|c| c.placement.is_some()) {
                return Err(channel_error(
                    &c.name,
                    "position, before and after have no meaning with replace_defaults = true",
                ));
            }
            return compile(file, own_channels);
        }

        let mut base: FileSpec = toml::from_str(ga4_default_toml())?;
        let base_channels = base
            .channel
            .iter()
            .enumerate()
            .map(|(i, table)| channel_spec(table, i))
            .collect::<Result<Vec<_>, _>>()?;
        let channels = place(base_channels, own_channels)?;
        if let Some(name) = file.unassigned {
            base.unassigned = Some(name);
        }
        base.referral_exclusions.extend(file.referral_exclusions);
        base.click_ids.extend(file.click_ids);
        for (engine, patterns) in file.search_engines {
            base.search_engines
                .entry(engine)
                .or_default()
                .extend(patterns);
        }
        for (category, sources) in file.sources {
            base.sources.entry(category).or_default().extend(sources);
        }
        compile(base, channels)
    }
}

fn channel_spec(table: &Table, index: usize) -> Result<ChannelSpec, ClassifyError> {
    let mut table = table.clone();
    let name = match table.remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name.trim().to_string(),
        _ => {
            let reason = "needs a `name`, a non-empty string";
            return Err(channel_error(&format!("#{}", index + 1), reason));
        }
    };
    let text_of = |table: &mut Table, key: &str| -> Result<Option<String>, ClassifyError> {
        match table.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(channel_error(&name, &format!("`{key}` must be a string"))),
        }
    };
    let position = text_of(&mut table, "position")?;
    let before = text_of(&mut table, "before")?;
    let after = text_of(&mut table, "after")?;
    let placement = match (position.as_deref(), before, after) {
        (None, None, None) => None,
        (Some("first"), None, None) => Some(Placement::First),
        (Some("last"), None, None) => Some(Placement::Last),
        (None, Some(other), None) => Some(Placement::Before(other)),
        (None, None, Some(other)) => Some(Placement::After(other)),
        (Some(p), None, None) => {
            let reason = format!("position `{p}` is neither \"first\" nor \"last\"");
            return Err(channel_error(&name, &reason));
        }
        _ => {
            let reason = "give only one of position, before and after";
            return Err(channel_error(&name, reason));
        }
    };
    let mut groups = Vec::new();
    if let Some(and) = table.remove("and") {
        let Value::Array(items) = and else {
            return Err(channel_error(
                &name,
                "`and` must be a list of condition tables",
            ));
        };
        for item in items {
            match item {
                Value::Table(group) if !group.is_empty() => groups.push(group),
                _ => {
                    let reason = "each `and` entry must be a table of conditions";
                    return Err(channel_error(&name, reason));
                }
            }
        }
    }
    if !table.is_empty() {
        groups.insert(0, table);
    }
    if groups.is_empty() {
        return Err(channel_error(&name, "has no conditions"));
    }
    Ok(ChannelSpec {
        name,
        placement,
        groups,
    })
}

/// The defaults with the file's own channels placed among them.
fn place(
    defaults: Vec<ChannelSpec>,
    own: Vec<ChannelSpec>,
) -> Result<Vec<ChannelSpec>, ClassifyError> {
    let (mut first, mut middle, mut last) = (Vec::new(), defaults, Vec::new());
    for channel in own {
        match &channel.placement {
            None | Some(Placement::First) => first.push(channel),
            Some(Placement::Last) => last.push(channel),
            Some(Placement::Before(other) | Placement::After(other)) => {
                let Some(at) = middle
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(other))
                else {
                    let reason = format!("no default channel `{other}` to place it next to");
                    return Err(channel_error(&channel.name, &reason));
                };
                let at = match channel.placement {
                    Some(Placement::After(_)) => at + 1,
                    _ => at,
                };
                middle.insert(at, channel);
            }
        }
    }
    first.append(&mut middle);
    first.append(&mut last);
    Ok(first)
}

fn compile(file: FileSpec, channels: Vec<ChannelSpec>) -> Result<Rules, ClassifyError> {
    if channels.len() > CHANNELS_MAX {
        let reason = format!("{} channels, more than {CHANNELS_MAX}", channels.len());
        return Err(ClassifyError::Invalid(reason));
    }
    if file.sources.len() > CATEGORIES_MAX {
        let reason = format!(
            "{} source categories, more than {CATEGORIES_MAX}",
            file.sources.len()
        );
        return Err(ClassifyError::Invalid(reason));
    }

    let categories: Vec<String> = file
        .sources
        .keys()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if let Some(twice) = categories
        .iter()
        .enumerate()
        .find(|(i, c)| categories[..*i].contains(c))
    {
        let reason = format!("source category `{}` is defined twice", twice.1);
        return Err(ClassifyError::Invalid(reason));
    }
    let mut source_categories: FastMap<Box<str>, u64> = FastMap::default();
    for (bit, sources) in file.sources.values().enumerate() {
        for source in sources {
            let source = source.trim().to_ascii_lowercase();
            if source.is_empty() {
                let reason = format!("an empty source in [sources] {}", categories[bit]);
                return Err(ClassifyError::Invalid(reason));
            }
            *source_categories.entry(source.into()).or_default() |= 1 << bit;
        }
    }

    let channels = channels
        .into_iter()
        .map(|spec| {
            let groups = spec
                .groups
                .iter()
                .map(|group| compile_group(group, &categories))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|reason| channel_error(&spec.name, &reason))?;
            Ok(Channel {
                name: spec.name,
                groups,
            })
        })
        .collect::<Result<Vec<_>, ClassifyError>>()?;

    let unassigned = file.unassigned.unwrap_or_else(|| "Unassigned".to_string());
    if unassigned.trim().is_empty() {
        return Err(ClassifyError::Invalid("`unassigned` is empty".to_string()));
    }

    let mut referral_exclusions = HostIndex::default();
    for entry in &file.referral_exclusions {
        let domain = exclusion_domain(entry).ok_or_else(|| {
            ClassifyError::Invalid(format!("referral_exclusions: `{entry}` is not a domain"))
        })?;
        referral_exclusions.insert(HostPattern::domain(&domain), 0);
    }

    let mut search_engines = Vec::new();
    let mut search_engine_hosts = HostIndex::default();
    for (engine, patterns) in file.search_engines {
        if engine.trim().is_empty() || patterns.is_empty() {
            let reason = format!("search engine `{engine}` needs a name and host patterns");
            return Err(ClassifyError::Invalid(reason));
        }
        for p in &patterns {
            let pattern = HostPattern::parse(p).ok_or_else(|| {
                let reason = format!("search_engines.{engine}: `{p}` is not a host pattern");
                ClassifyError::Invalid(reason)
            })?;
            search_engine_hosts.insert(pattern, search_engines.len() as u32);
        }
        search_engines.push(engine);
    }

    let mut click_ids = Vec::new();
    for (param, spec) in file.click_ids {
        if param.trim().is_empty() || spec.source.trim().is_empty() || spec.medium.trim().is_empty()
        {
            let reason = format!("click_ids.{param} needs a non-empty source and medium");
            return Err(ClassifyError::Invalid(reason));
        }
        click_ids.push(ClickIdRule {
            param: param.trim().to_ascii_lowercase(),
            source: spec.source,
            medium: spec.medium,
        });
    }

    Ok(Rules {
        channels,
        unassigned,
        categories,
        source_categories,
        search_engines,
        search_engine_hosts,
        click_ids,
        referral_exclusions,
    })
}

/// One condition group: every key is a test, the group holds when any test holds.
fn compile_group(group: &Table, categories: &[String]) -> Result<Vec<Test>, String> {
    let mut tests = Vec::new();
    for (key, value) in group {
        let test = match key.as_str() {
            "source_category" => {
                let mut mask = 0u64;
                for name in strings(key, value)? {
                    let Some(bit) = categories.iter().position(|c| *c == name) else {
                        let known = categories.join(", ");
                        return Err(format!(
                            "source_category `{name}` is not in [sources] ({known})"
                        ));
                    };
                    mask |= 1 << bit;
                }
                Test::SourceCategory(mask)
            }
            "param_in" => Test::Param(
                strings(key, value)?
                    .into_iter()
                    .map(|entry| match entry.split_once('=') {
                        Some((k, v)) => (k.into(), Some(v.into())),
                        None => (entry.into(), None),
                    })
                    .collect(),
            ),
            _ => {
                let (field, op) = split_key(key).ok_or_else(|| unknown_key(key))?;
                match op {
                    None => Test::ContainsNotAfter {
                        field,
                        values: guarded(key, value)?,
                    },
                    Some(op) => {
                        let values = strings(key, value)?;
                        if field == Field::Path {
                            if let Some(bad) = values.iter().find(|v| !v.starts_with('/')) {
                                return Err(format!(
                                    "{key}: `{bad}` is not a path (starts with /)"
                                ));
                            }
                        }
                        let values = values
                            .into_iter()
                            .map(|v| match (field, op) {
                                (Field::Path, Op::In) if v.len() > 1 => {
                                    v.trim_end_matches('/').into()
                                }
                                _ => v.into(),
                            })
                            .collect();
                        Test::Text { field, op, values }
                    }
                }
            }
        };
        tests.push(test);
    }
    Ok(tests)
}

/// `medium_prefix` -> (Medium, Some(Prefix)); `campaign_contains_not_after` -> (Campaign, None).
fn split_key(key: &str) -> Option<(Field, Option<Op>)> {
    let (field, op) = key.split_once('_')?;
    let field = match field {
        "source" => Field::Source,
        "medium" => Field::Medium,
        "campaign" => Field::Campaign,
        "path" => Field::Path,
        _ => return None,
    };
    let op = match op {
        "in" => Some(Op::In),
        "prefix" => Some(Op::Prefix),
        "suffix" => Some(Op::Suffix),
        "contains" => Some(Op::Contains),
        "contains_not_after" if field != Field::Path => None,
        _ => return None,
    };
    Some((field, op))
}

fn unknown_key(key: &str) -> String {
    format!(
        "unknown condition `{key}`; conditions are \
         {{source,medium,campaign}}_{{in,prefix,suffix,contains,contains_not_after}}, \
         path_in, path_prefix, param_in, source_category, and `and`"
    )
}

/// A non-empty list of non-empty strings, lowercased (ASCII) for matching.
fn strings(key: &str, value: &Value) -> Result<Vec<String>, String> {
    let Value::Array(items) = value else {
        return Err(format!("`{key}` must be a list of strings"));
    };
    if items.is_empty() {
        return Err(format!("`{key}` is an empty list"));
    }
    items
        .iter()
        .map(|item| match item.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_ascii_lowercase()),
            _ => Err(format!("`{key}` must be a list of non-empty strings")),
        })
        .collect()
}

/// `[{ text = "shop", not_after = "abcd" }, ...]`, lowercased.
fn guarded(key: &str, value: &Value) -> Result<Vec<Guarded>, String> {
    let shape = || format!("`{key}` must be a list of {{ text = \"...\", not_after = \"...\" }}");
    let Value::Array(items) = value else {
        return Err(shape());
    };
    if items.is_empty() {
        return Err(format!("`{key}` is an empty list"));
    }
    items
        .iter()
        .map(|item| {
            let table = item.as_table().ok_or_else(shape)?;
            let text = table
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty());
            let not_after = table.get("not_after").and_then(Value::as_str);
            match (text, not_after, table.len()) {
                (Some(text), Some(not_after), 2) => Ok(Guarded {
                    text: text.to_ascii_lowercase().into(),
                    not_after: not_after.to_ascii_lowercase().into(),
                }),
                _ => Err(shape()),
            }
        })
        .collect()
}

/// `myshop.com`, `www.myshop.com`, `*.myshop.com` and `https://myshop.com/` all mean
/// `myshop.com` and its subdomains.
fn exclusion_domain(entry: &str) -> Option<String> {
    let entry = entry.trim();
    let entry = entry.strip_prefix("*.").unwrap_or(entry);
    let host = url::parse(entry).host.to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host);
    (!host.is_empty()).then(|| host.to_string())
}

fn channel_error(channel: &str, reason: &str) -> ClassifyError {
    ClassifyError::Channel {
        channel: channel.to_string(),
        reason: reason.to_string(),
    }
}
