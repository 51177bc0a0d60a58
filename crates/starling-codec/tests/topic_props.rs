//! Property tests of topic validation and matching against a naive reference matcher.

use proptest::collection::vec;
use proptest::prelude::*;
use starling_codec::topic::{matches, validate_filter, validate_topic_name};

/// The MQTT rules written as directly as possible, on level lists.
fn reference(filter: &[&str], topic: &[&str], first: bool) -> bool {
    if first && topic.first().is_some_and(|l| l.starts_with('$')) {
        if let Some(&("+" | "#")) = filter.first() {
            return false;
        }
    }
    match (filter.split_first(), topic.split_first()) {
        (Some((&"#", _)), _) => true,
        (Some((&"+", f)), Some((_, t))) => reference(f, t, false),
        (Some((fl, f)), Some((tl, t))) => fl == tl && reference(f, t, false),
        (None, None) => true,
        _ => false,
    }
}

fn topic_levels() -> impl Strategy<Value = Vec<&'static str>> {
    vec(
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$SYS"), Just("$")],
        1..5,
    )
}

fn filter_levels() -> impl Strategy<Value = Vec<&'static str>> {
    (
        vec(
            prop_oneof![Just("a"), Just("b"), Just(""), Just("+"), Just("$SYS")],
            0..5,
        ),
        any::<bool>(),
    )
        .prop_filter_map("a filter is not empty", |(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            (!levels.join("/").is_empty()).then_some(levels)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn matches_agrees_with_reference(f in filter_levels(), t in topic_levels()) {
        let filter = f.join("/");
        let topic = t.join("/");
        prop_assert_eq!(validate_filter(&filter), Ok(()), "{}", filter);
        if !topic.is_empty() {
            prop_assert_eq!(validate_topic_name(&topic), Ok(()));
        }
        prop_assert_eq!(matches(&filter, &topic), reference(&f, &t, true), "{} vs {}", filter, topic);
    }

    #[test]
    fn a_topic_name_matches_itself(t in topic_levels()) {
        let topic = t.join("/");
        prop_assert!(matches(&topic, &topic));
    }

    #[test]
    fn hash_matches_every_non_system_topic(t in topic_levels()) {
        let topic = t.join("/");
        prop_assert_eq!(matches("#", &topic), !topic.starts_with('$'));
    }

    #[test]
    fn arbitrary_strings_never_panic(f in ".{0,12}", t in ".{0,12}") {
        let _ = validate_filter(&f);
        let _ = validate_topic_name(&t);
        let _ = matches(&f, &t);
    }
}
