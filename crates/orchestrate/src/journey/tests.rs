use super::*;

const GOOD: &str = r#"
name = "welcome"
priority = 5
reentry = "30d"
trigger = { event = "Signed Up where plan = 'pro'" }
goal = { event = "Order Completed", within = "14d" }
limits = { active_max = 1000 }

[[steps]]
id = "hello"
type = "email"
subject = "Welcome {{ traits.first_name }}"
html = "<p>Hi {{ traits.first_name }}, see <a href=\"https://shop.example/start\">this</a></p>"

[[steps]]
id = "pause"
type = "wait"
duration = "2d"

[[steps]]
id = "bought"
type = "wait_for_event"
event = "Order Completed"
timeout = "3d"
on_event = "end"

[[steps]]
id = "pro"
type = "branch"
trait = "plan = 'pro'"
else = "end"

[[steps]]
id = "split"
type = "split"
variants = [{ name = "holdout", weight = 1, holdout = true, next = "end" }, { name = "treat", weight = 9 }]

[[steps]]
id = "nudge"
type = "webhook"
url = "https://hooks.example/nudge"
channel = "sms"
"#;

fn problems(text: &str) -> Vec<Problem> {
    validate(text).err().unwrap_or_default()
}

#[test]
fn a_good_file_compiles_in_toml_and_json() {
    let (file, j) = validate(GOOD).unwrap();
    assert_eq!(j.name, "welcome");
    assert_eq!(j.reentry, Reentry::Every(30 * DAY_MS));
    assert_eq!(j.steps.len(), 6);
    // A step without `next` goes on to the following one; "end" ends.
    assert!(matches!(
        j.steps[1].kind,
        StepKind::Wait { next: Some(2), .. }
    ));
    assert!(matches!(
        j.steps[2].kind,
        StepKind::WaitForEvent {
            on_event: None,
            on_timeout: Some(3),
            ..
        }
    ));
    assert!(matches!(
        j.steps[5].kind,
        StepKind::Action { next: None, .. }
    ));
    assert_eq!(
        j.trait_keys(),
        ["first_name".to_string(), "plan".to_string()]
            .into_iter()
            .collect()
    );
    let json = serde_json::to_string(&file).unwrap();
    let (again, _) = validate(&json).unwrap();
    assert_eq!(again, file);
}

#[test]
fn errors_name_the_step_and_the_field() {
    let bad = GOOD
        .replace("duration = \"2d\"", "duration = \"2 days\"")
        .replace("timeout = \"3d\"", "timeout = \"3d\"\ncolour = \"red\"");
    let p = problems(&bad);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("pause"), "duration")
    );
    assert!(p[0].error.contains("invalid duration"), "{}", p[0].error);
    assert_eq!(
        (p[1].step.as_deref(), p[1].field.as_str()),
        (Some("bought"), "colour")
    );
    assert!(p[1].error.contains("unknown field"), "{}", p[1].error);

    let p = problems(&GOOD.replace("else = \"end\"", "else = \"nowhere\""));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("pro"), "else")
    );
    assert!(p[0].error.contains("nowhere"));

    let p = problems(&GOOD.replace(
        "html = \"<p>Hi {{ traits.first_name }}",
        "html = \"<p>Hi {{ traits.first_name }",
    ));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("hello"), "html")
    );
    assert!(p[0].error.contains("template error"), "{}", p[0].error);

    let p = problems(&GOOD.replace("type = \"wait\"", "type = \"sleep\""));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("pause"), "type")
    );

    let p = problems(&GOOD.replace("subject = \"Welcome {{ traits.first_name }}\"\n", ""));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("hello"), "subject")
    );

    let p = problems(&GOOD.replace("duration = \"2d\"", "duration = 2"));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("pause"), "duration")
    );
    assert!(p[0].error.contains("invalid type"), "{}", p[0].error);

    let p = problems(&GOOD.replace(
        "trigger = { event = \"Signed Up where plan = 'pro'\" }",
        "trigger = { event = \"Signed Up where revenue > lots\" }",
    ));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (None, "trigger.event")
    );

    let p = problems(&GOOD.replace("url = \"https://hooks.example/nudge\"", "url = \"ftp://x\""));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("nudge"), "url")
    );

    let p = problems(&GOOD.replace(
        "{ name = \"treat\", weight = 9 }",
        "{ name = \"treat\", weight = 0 }",
    ));
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("split"), "variants[1].weight")
    );
}

#[test]
fn cycles_duplicate_ids_and_missing_ids_are_refused() {
    let cyc = GOOD.replace("else = \"end\"", "else = \"pause\"");
    let p = problems(&cyc);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].error.contains("cycle"), "{p:?}");
    let dup = GOOD.replace("id = \"pause\"", "id = \"hello\"");
    assert!(problems(&dup)
        .iter()
        .any(|p| p.field == "id" && p.step.as_deref() == Some("hello")));
    let none = GOOD.replace("id = \"pause\"\n", "");
    let p = problems(&none);
    assert_eq!(
        (p[0].step.as_deref(), p[0].field.as_str()),
        (Some("#2"), "id")
    );
    let p = problems("name = \"x\"\nsteps = []\n");
    assert_eq!(p[0].field, "trigger", "{p:?}");
    assert!(p[0].error.contains("missing field"));
    assert!(problems("{\"name\": \"x\",")
        .first()
        .unwrap()
        .error
        .contains("invalid JSON"));
    assert!(problems("name = ")
        .first()
        .unwrap()
        .error
        .contains("invalid TOML"));
}

#[test]
fn an_audience_trigger_reads_the_analytics_filters() {
    let text = r#"
name = "browsers"
[trigger.audience]
did = ["Product Viewed where category = 'headphones'", "page:/pricing*"]
not_did = ["Order Completed"]
within = "7d"
traits = ["plan = 'free'"]
[[steps]]
id = "hook"
type = "export"
audience = "retarget"
"#;
    let (_, j) = validate(text).unwrap();
    let Trigger::Audience(a) = &j.trigger else {
        panic!()
    };
    assert_eq!(
        (a.did.len(), a.not_did.len(), a.within_ms, a.traits.len()),
        (2, 1, 7 * DAY_MS, 1)
    );
    let p = problems(&text.replace("within = \"7d\"", "within = \"a week\""));
    assert_eq!(p[0].field, "trigger.audience.within");
}
