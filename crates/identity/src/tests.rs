use super::*;
use throughline_model::EventType;

fn ev(t: EventType, user: Option<&str>, anon: Option<&str>) -> Event {
    Event {
        message_id: String::new(),
        event_type: t,
        event: None,
        user_id: user.map(str::to_string),
        anonymous_id: anon.map(str::to_string),
        previous_id: None,
        group_id: None,
        email: None,
        timestamp: 0,
        received_at: 0,
        original_timestamp: None,
        sent_at: None,
        page_url: None,
        page_path: None,
        referrer: None,
        utm: Default::default(),
        click_id: None,
        properties: Default::default(),
        context: Default::default(),
        traits: Default::default(),
    }
}

fn track_anon(a: &str) -> Event {
    ev(EventType::Track, None, Some(a))
}
fn identify(u: &str, a: &str) -> Event {
    ev(EventType::Identify, Some(u), Some(a))
}

#[test]
fn identify_stitches_earlier_anonymous_touches() {
    let mut g = IdentityGraph::default();
    let before = g.observe(&track_anon("phone"));
    let laptop = g.observe(&track_anon("laptop"));
    assert_ne!(g.person_of(before), g.person_of(laptop));
    g.observe(&identify("ann", "phone"));
    g.observe(&identify("ann", "laptop"));
    assert_eq!(g.person_of(before), g.person_of(laptop));
    assert_eq!(g.canonical_id(g.person_of(before)), "ann");
    assert_eq!(g.find_person("laptop"), Some(g.person_of(before)));
}

#[test]
fn a_shared_device_never_merges_two_users() {
    let mut g = IdentityGraph::default();
    g.observe(&identify("ann", "tablet"));
    let bob = g.observe(&identify("bob", "tablet"));
    let ann = g.find_person("ann").unwrap();
    assert_ne!(ann, g.person_of(bob));
    // The tablet stays with whoever identified on it first.
    assert_eq!(g.find_person("tablet"), Some(ann));
    assert_eq!(g.stats().refused_two_users, 1);
}

#[test]
fn junk_ids_merge_nothing() {
    let mut g = IdentityGraph::default();
    g.observe(&identify("ann", "undefined"));
    g.observe(&identify("bob", "NULL"));
    let ann = g.find_person("ann").unwrap();
    let bob = g.find_person("bob").unwrap();
    assert_ne!(ann, bob);
    assert_eq!(g.stats().merges, 0);
    // A message with only a junk id is still kept, on a node of its own.
    let n = g.observe(&track_anon("guest"));
    assert_ne!(g.person_of(n), ann);
}

#[test]
fn anonymous_ids_per_person_are_bounded() {
    let mut g = IdentityGraph::new(IdentityConfig {
        anonymous_ids_per_person_max: 2,
        ..IdentityConfig::default()
    });
    for a in ["d1", "d2", "d3"] {
        g.observe(&identify("ann", a));
    }
    let ann = g.find_person("ann").unwrap();
    assert_eq!(g.find_person("d2"), Some(ann));
    assert_ne!(g.find_person("d3"), Some(ann));
    assert_eq!(g.stats().refused_limit, 1);
}

#[test]
fn alias_and_email_join_persons() {
    let mut g = IdentityGraph::default();
    let mut alias = ev(EventType::Alias, Some("new-id"), None);
    alias.previous_id = Some("old-id".into());
    g.observe(&ev(EventType::Track, Some("old-id"), None));
    g.observe(&alias);
    assert_eq!(g.find_person("old-id"), g.find_person("new-id"));

    let mut form = track_anon("kiosk-visit");
    form.email = Some("ann@example.com".into());
    g.observe(&form);
    let mut login = ev(EventType::Identify, Some("ann"), None);
    login.email = Some("ann@example.com".into());
    g.observe(&login);
    assert_eq!(g.find_person("kiosk-visit"), g.find_person("ann"));
    assert_eq!(g.find_person("ANN@example.com"), g.find_person("ann"));
}

#[test]
fn snapshot_round_trips_and_replay_is_deterministic() {
    let events = [
        track_anon("a"),
        identify("u1", "a"),
        track_anon("b"),
        identify("u2", "b"),
        identify("u2", "a"),
    ];
    let mut g1 = IdentityGraph::default();
    let mut g2 = IdentityGraph::default();
    let n1: Vec<_> = events.iter().map(|e| g1.observe(e)).collect();
    let n2: Vec<_> = events.iter().map(|e| g2.observe(e)).collect();
    assert_eq!(n1, n2);
    let g3 = IdentityGraph::from_snapshot(&g1.to_snapshot()).unwrap();
    assert_eq!(g3.person_table(), g1.person_table());
    assert_eq!(g3.find_person("a"), g1.find_person("u1"));
}

#[test]
fn forgetting_a_person_erases_all_their_ids() {
    let mut g = IdentityGraph::default();
    g.observe(&identify("ann", "phone"));
    g.observe(&identify("bob", "pc"));
    let ann = g.find_person("ann").unwrap();
    let erased = g.forget_person(ann);
    assert_eq!(erased.len(), 2);
    assert_eq!(g.find_person("ann"), None);
    assert_eq!(g.find_person("phone"), None);
    assert!(g.find_person("bob").is_some());
    assert!(erased.iter().all(|&n| g.is_forgotten(n)));
    let snap = g.to_snapshot();
    let contains = |needle: &[u8]| snap.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"ann") && !contains(b"phone"));
    // Damage is detected, never loaded as a different graph.
    let mut bad = snap.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    assert!(IdentityGraph::from_snapshot(&bad).is_err());
    assert!(IdentityGraph::from_snapshot(&snap[..snap.len() - 1]).is_err());
    let back = IdentityGraph::from_snapshot(&snap).unwrap();
    assert_eq!(back.person_table(), g.person_table());
    assert_eq!(back.find_person("bob"), g.find_person("bob"));
    assert_eq!(back.to_snapshot(), snap);
}

/// The journal names every node whose person a merge changed, so a backend that stored
/// persons beside events can override exactly those.
#[test]
fn the_journal_lists_the_nodes_a_merge_relabelled() {
    let mut g = IdentityGraph::default();
    let phone = g.observe(&track_anon("phone"));
    g.start_journal();
    let laptop = g.observe(&track_anon("laptop"));
    assert!(g.drain_journal().is_empty(), "a new node is no relabel");
    // ann (a new node) and the phone are one set each: the phone's is absorbed.
    let ann = g.observe(&identify("ann", "phone"));
    assert_eq!(g.drain_journal(), vec![phone]);
    assert_eq!(g.person_of(phone), ann);
    // Two persons of two nodes and one: the smaller one moves.
    g.observe(&identify("ann", "laptop"));
    assert_eq!(g.drain_journal(), vec![laptop]);
    assert_eq!(g.person_of(laptop), ann);
    assert!(g.drain_journal().is_empty());
    assert_eq!(g.node(laptop), (IdKind::Anonymous, "laptop"));
    // Erasure gives every node a person of its own again: all are listed.
    let mut erased = g.forget_person(ann);
    erased.sort_unstable();
    let mut listed = g.drain_journal();
    listed.sort_unstable();
    assert_eq!(listed, erased);
}

#[test]
fn a_graph_rebuilt_from_its_node_table_answers_as_the_original() {
    let mut g = IdentityGraph::default();
    g.observe(&track_anon("phone"));
    g.observe(&track_anon("laptop"));
    g.observe(&identify("ann", "phone"));
    g.observe(&identify("ann", "laptop"));
    g.observe(&identify("bob", "tablet"));
    g.observe(&track_anon("kiosk"));
    // What a backend's table holds per node: kind, id, person, whether it is the user id.
    let table: Vec<_> = (0..g.node_count() as NodeId)
        .map(|n| {
            let (kind, id) = g.node(n);
            let person = g.person_of(n);
            (kind, id.to_string(), person, g.user_of(person) == Some(n))
        })
        .collect();
    let r = IdentityGraph::from_nodes(IdentityConfig::default(), table);
    assert_eq!(r.node_count(), g.node_count());
    for n in 0..g.node_count() as NodeId {
        let p = g.person_of(n);
        assert_eq!(r.person_of(n), p);
        assert_eq!(r.canonical_id(p), g.canonical_id(p));
        assert_eq!(r.ids_of(p), g.ids_of(p));
        assert_eq!(r.user_of(p), g.user_of(p));
    }
    for id in ["ann", "bob", "phone", "laptop", "tablet", "kiosk", "nobody"] {
        assert_eq!(r.find_person(id), g.find_person(id), "{id}");
    }
}
