//! Journey stages: which events and pages belong to awareness, consideration, purchase,
//! onboarding, support, renewal (or whatever stages a project names), in journey order.
//!
//! A project sets them in `DIR/projects/NAME/stages.toml`; without the file,
//! [`DEFAULT_STAGES_TOML`] applies, written for Segment's e-commerce and B2B SaaS event
//! names. Each stage lists matchers in `query funnel` syntax (`Order Completed`, `A|B`,
//! `page:/pricing*`; no `where` conditions) and, optionally, the values of a survey's
//! `stage` property that belong to it. An event takes the first stage, in file order, that
//! matches it. Read per query, like `channels.toml`; bounded by [`STAGES_MAX`] stages,
//! [`MATCHERS_PER_STAGE_MAX`] matchers each and [`STAGES_BYTES_MAX`] bytes.

use std::path::Path;

use serde::Deserialize;
use throughline_store::StoreError;

use crate::spec::StepMatcher;
use crate::QueryError;

pub const STAGES_FILE: &str = "stages.toml";
pub const STAGES_MAX: usize = 32;
pub const MATCHERS_PER_STAGE_MAX: usize = 64;
pub const STAGES_BYTES_MAX: usize = 256 << 10;

/// The stages used when a project has no `stages.toml`.
pub const DEFAULT_STAGES_TOML: &str = r#"# Journey stages, in journey order. An event belongs to the first stage that matches it.
# `events`: event names (`A|B` for either, `*` wildcards) or page views (`page:/path*`).
# `survey_stages`: values of a survey answer's `stage` property that belong to the stage.

[[stage]]
name = "awareness"
events = ["page:/", "page:/lp/*", "page:/blog/*", "page:/podcast*", "page:/print*", "page:/radio*", "page:/tv*"]
survey_stages = ["awareness"]

[[stage]]
name = "consideration"
events = ["Product Viewed", "Product List Viewed", "Products Searched", "Product Clicked", "page:/products/*", "page:/collections/*", "page:/pricing*", "page:/features*", "page:/compare/*", "page:/templates/*"]
survey_stages = ["consideration"]

[[stage]]
name = "purchase"
events = ["Product Added", "Cart Viewed", "Checkout Started", "Payment Info Entered", "Order Completed", "Signup Started", "Signed Up", "Trial Started", "Subscription Started", "page:/cart*", "page:/checkout*", "page:/signup*"]
survey_stages = ["purchase", "checkout"]

[[stage]]
name = "onboarding"
events = ["Order Shipped", "Order Delivered", "Application Installed", "Onboarding Step Completed", "Onboarding Completed"]
survey_stages = ["onboarding", "post_purchase"]

[[stage]]
name = "support"
events = ["Support Ticket Opened", "Support Ticket Resolved", "Support Message Sent", "page:/support*", "page:/help*"]
survey_stages = ["support"]

[[stage]]
name = "renewal"
events = ["Subscription Renewed", "Subscription Cancelled", "Trial Ended", "Return Requested", "Order Refunded"]
survey_stages = ["renewal", "retention", "cancellation"]
"#;

/// One stage: its name, what marks it, and the survey `stage` values that name it.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    pub matchers: Vec<StepMatcher>,
    pub survey_stages: Vec<String>,
}

/// A project's stages, in journey order.
#[derive(Clone, Debug)]
pub struct Stages {
    pub stages: Vec<Stage>,
    /// Where they came from: the file's path, or `default`.
    pub source: String,
}

impl Stages {
    pub fn from_toml(text: &str, source: &str) -> Result<Stages, QueryError> {
        if text.len() > STAGES_BYTES_MAX {
            return Err(QueryError::invalid(format!(
                "{source}: more than {STAGES_BYTES_MAX} bytes"
            )));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            stage: Vec<Raw>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: String,
            #[serde(default)]
            events: Vec<String>,
            #[serde(default)]
            survey_stages: Vec<String>,
        }
        let file: File =
            toml::from_str(text).map_err(|e| QueryError::invalid(format!("{source}: {e}")))?;
        if file.stage.is_empty() || file.stage.len() > STAGES_MAX {
            return Err(QueryError::invalid(format!(
                "{source}: name 1 to {STAGES_MAX} [[stage]] tables"
            )));
        }
        let mut stages: Vec<Stage> = Vec::with_capacity(file.stage.len());
        for raw in file.stage {
            let name = raw.name.trim().to_string();
            if name.is_empty() {
                return Err(QueryError::invalid(format!(
                    "{source}: a stage has no name"
                )));
            }
            if stages.iter().any(|s| s.name == name) {
                return Err(QueryError::invalid(format!(
                    "{source}: stage {name:?} appears twice"
                )));
            }
            if raw.events.len() > MATCHERS_PER_STAGE_MAX {
                return Err(QueryError::invalid(format!(
                    "{source}: stage {name:?} has more than {MATCHERS_PER_STAGE_MAX} events"
                )));
            }
            let mut matchers = Vec::with_capacity(raw.events.len());
            for e in &raw.events {
                let m = StepMatcher::parse(e).map_err(|err| {
                    QueryError::invalid(format!("{source}: stage {name:?}: {err}"))
                })?;
                if !m.filters.is_empty() {
                    return Err(QueryError::invalid(format!(
                        "{source}: stage {name:?}: event {e:?}: stages match names and paths; `where` conditions are not supported"
                    )));
                }
                matchers.push(m);
            }
            stages.push(Stage {
                name,
                matchers,
                survey_stages: raw.survey_stages,
            });
        }
        Ok(Stages {
            stages,
            source: source.to_string(),
        })
    }

    pub fn default_stages() -> Stages {
        Stages::from_toml(DEFAULT_STAGES_TOML, "default").expect("the default stages parse")
    }

    /// The project's `stages.toml`, else the defaults.
    pub fn load(project_dir: &Path) -> Result<Stages, QueryError> {
        let path = project_dir.join(STAGES_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Stages::from_toml(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stages::default_stages()),
            Err(e) => Err(QueryError::Store(StoreError::io(&path, e))),
        }
    }

    /// The stage of an event, by kind, name and path.
    pub fn of_event(&self, kind: u8, name: Option<&str>, path: Option<&str>) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| s.matchers.iter().any(|m| m.matches_event(kind, name, path)))
    }

    /// The stage a survey's `stage` property names: a listed value or the stage's own name.
    pub fn of_survey_stage(&self, value: &str) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| s.name == value || s.survey_stages.iter().any(|v| v == value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use throughline_model::EventType;

    #[test]
    fn events_take_the_first_matching_stage() {
        let s = Stages::default_stages();
        let names: Vec<&str> = s.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "awareness",
                "consideration",
                "purchase",
                "onboarding",
                "support",
                "renewal"
            ]
        );
        let page = EventType::Page.code();
        let track = EventType::Track.code();
        let at = |k, n, p| s.of_event(k, n, p).map(|i| s.stages[i].name.as_str());
        assert_eq!(at(page, Some("Home"), Some("/")), Some("awareness"));
        assert_eq!(at(page, None, Some("/pricing")), Some("consideration"));
        assert_eq!(
            at(track, Some("Order Completed"), Some("/checkout")),
            Some("purchase")
        );
        // A track sent from a support page is not a page view of it.
        assert_eq!(at(track, Some("Clicked"), Some("/support")), None);
        assert_eq!(
            at(track, Some("Support Ticket Opened"), None),
            Some("support")
        );
        assert_eq!(s.of_survey_stage("post_purchase"), Some(3));
        assert_eq!(s.of_survey_stage("support"), Some(4));
        assert_eq!(s.of_survey_stage("nowhere"), None);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, want) in [
            ("", "1 to 32"),
            (
                "[[stage]]\nname = \"a\"\nevents = [\"X where y > 1\"]\n",
                "where",
            ),
            (
                "[[stage]]\nname = \"a\"\n[[stage]]\nname = \"a\"\n",
                "twice",
            ),
            ("[[stage]]\nname = \"a\"\ncolour = 1\n", "colour"),
        ] {
            let err = Stages::from_toml(text, "s.toml").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
