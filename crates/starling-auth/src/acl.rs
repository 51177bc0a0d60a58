//! ACL files in Mosquitto's `acl_file` syntax, and their evaluation for one client.
//!
//! ```text
//! # comment
//! topic read public/#            <- before any `user` line: rules for anonymous clients
//! user alice
//! topic readwrite alice/#        <- rules for user alice (all `user alice` sections add up)
//! topic deny alice/secret/#
//! pattern write devices/%c/up    <- for every client, wherever it stands: %c = client id,
//! pattern read users/%u/#           %u = user name (rules with %u skip anonymous clients)
//! ```
//!
//! Access is `read`, `write`, `readwrite` (the default when omitted) or `deny`. The rules that
//! apply to a client are compiled once per connection into a [`ClientAcl`]:
//! - a topic is allowed if some rule with the access matches it and **no `deny` rule matches
//!   it**: a denial wins wherever it stands in the file;
//! - an ACL file that is configured but gives a client no rule denies that client everything;
//! - when the client id or user name contains `/`, `+` or `#`, `pattern` rules give that client
//!   nothing (a client could otherwise pick an id that widens a pattern), as Mosquitto does;
//! - rule filters match as subscriptions do (`+`, `#`, and `$` topics only through rules whose
//!   first level is not a wildcard).
//!
//! [`ClientAcl::subscription`] classifies a SUBSCRIBE filter: every topic it can match is
//! readable ([`Coverage::Full`]: no per-message check), none is ([`Coverage::None`]: the broker
//! refuses it), or some are ([`Coverage::Partial`]: each delivery is checked).

use std::collections::HashMap;
use std::fmt;

use starling_codec::topic;

use crate::filter::{covers, intersects};

/// What a rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access(u8);

impl Access {
    /// Explicit denial.
    pub const DENY: Access = Access(0);
    /// Receive messages (subscriptions, retained messages, wills).
    pub const READ: Access = Access(1);
    /// Publish (and wills).
    pub const WRITE: Access = Access(2);
    /// Both.
    pub const READWRITE: Access = Access(3);

    /// True for a `deny` rule.
    pub fn is_deny(self) -> bool {
        self.0 == 0
    }

    /// Whether this grants everything `want` asks for.
    pub fn grants(self, want: Access) -> bool {
        want.0 != 0 && self.0 & want.0 == want.0
    }

    fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "read" => Access::READ,
            "write" => Access::WRITE,
            "readwrite" => Access::READWRITE,
            "deny" => Access::DENY,
            _ => return None,
        })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "deny",
            1 => "read",
            2 => "write",
            _ => "readwrite",
        })
    }
}

/// One line of an ACL file (a `topic` or `pattern` rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The topic filter (for a pattern, with `%c` / `%u` still in it).
    pub filter: String,
    /// What it grants.
    pub access: Access,
}

/// An ACL file cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct AclError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// A parsed ACL file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl AclFile {
    /// Parses the text of an ACL file.
    ///
    /// # Errors
    /// The first malformed line: an unknown keyword, a `user` line without a name, an unknown
    /// access type, a missing or invalid topic filter.
    pub fn parse(text: &str) -> Result<AclFile, AclError> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (n, raw) in text.lines().enumerate() {
            let err = |reason: String| AclError {
                line: n + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` without a user name".into()));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (first, after) = split_word(rest);
                    // `topic read` alone names the topic "read", as in Mosquitto.
                    let (access, filter) = if after.is_empty() {
                        (Access::READWRITE, first)
                    } else {
                        let access = Access::parse(first).ok_or_else(|| {
                            err(format!(
                                "invalid access type {first:?} (read, write, readwrite or deny)"
                            ))
                        })?;
                        (access, after)
                    };
                    if filter.is_empty() {
                        return Err(err(format!("`{keyword}` without a topic")));
                    }
                    topic::validate_filter(filter)
                        .map_err(|e| err(format!("invalid topic filter {filter:?}: {e}")))?;
                    let rule = Rule {
                        filter: filter.to_string(),
                        access,
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, None) => acl.anonymous.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Rules for anonymous clients (`topic` lines before the first `user` line).
    pub fn anonymous_rules(&self) -> &[Rule] {
        &self.anonymous
    }

    /// `topic` rules of `user`.
    pub fn user_rules(&self, user: &str) -> &[Rule] {
        self.users.get(user).map_or(&[], Vec::as_slice)
    }

    /// `pattern` rules.
    pub fn patterns(&self) -> &[Rule] {
        &self.patterns
    }

    /// Number of rules in the file.
    pub fn len(&self) -> usize {
        self.anonymous.len()
            + self.patterns.len()
            + self.users.values().map(Vec::len).sum::<usize>()
    }

    /// True if the file has no rule (which denies everything to everyone).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rules that apply to a client with this user name (`None`: anonymous) and client id,
    /// patterns substituted.
    pub fn for_client(&self, username: Option<&str>, client_id: &str) -> ClientAcl {
        let mut rules: Vec<Rule> = match username {
            Some(u) => self.user_rules(u).to_vec(),
            None => self.anonymous.clone(),
        };
        let dangerous = |s: &str| s.contains(['/', '+', '#']);
        let patterns_apply =
            !dangerous(client_id) && !username.is_some_and(dangerous) && !self.patterns.is_empty();
        if patterns_apply {
            for p in &self.patterns {
                if p.filter.contains("%u") && username.is_none() {
                    continue;
                }
                let filter = substitute(&p.filter, client_id, username.unwrap_or(""));
                // An empty client id or user name can leave an invalid filter (`a/%c` → `a/`
                // is fine, but `%c` alone → `` is not): such a rule grants nothing.
                if topic::validate_filter(&filter).is_ok() {
                    rules.push(Rule {
                        filter,
                        access: p.access,
                    });
                }
            }
        }
        ClientAcl { rules }
    }
}

/// Replaces `%c` and `%u` in one pass (a client id containing `%u` is not substituted again).
fn substitute(pattern: &str, client_id: &str, username: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.as_bytes().get(i + 1) {
            Some(b'c') => out.push_str(client_id),
            Some(b'u') => out.push_str(username),
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// How much of a subscription an ACL lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every topic the filter can match is readable: deliveries need no check.
    Full,
    /// Some topics are readable: each delivery is checked.
    Partial,
    /// Nothing the filter can match is readable: the subscription is refused.
    None,
}

/// The ACL rules that apply to one client, ready for checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAcl {
    rules: Vec<Rule>,
}

impl ClientAcl {
    /// An ACL from explicit rules (tests, embedding).
    pub fn from_rules(rules: Vec<Rule>) -> ClientAcl {
        ClientAcl { rules }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn allows(&self, topic: &str, want: Access) -> bool {
        let mut allowed = false;
        for r in &self.rules {
            if topic::matches(&r.filter, topic) {
                if r.access.is_deny() {
                    return false;
                }
                allowed |= r.access.grants(want);
            }
        }
        allowed
    }

    /// May the client receive messages published to `topic`?
    pub fn can_read(&self, topic: &str) -> bool {
        self.allows(topic, Access::READ)
    }

    /// May the client publish to `topic`?
    pub fn can_write(&self, topic: &str) -> bool {
        self.allows(topic, Access::WRITE)
    }

    /// Classifies a subscription to `filter` (a valid topic filter).
    pub fn subscription(&self, filter: &str) -> Coverage {
        let mut some = false;
        let mut full = false;
        let mut denial_inside = false;
        for r in &self.rules {
            if r.access.is_deny() {
                if covers(&r.filter, filter) {
                    return Coverage::None;
                }
                denial_inside |= intersects(&r.filter, filter);
            } else if r.access.grants(Access::READ) {
                if covers(&r.filter, filter) {
                    full = true;
                    some = true;
                } else if intersects(&r.filter, filter) {
                    some = true;
                }
            }
        }
        match (some, full && !denial_inside) {
            (false, _) => Coverage::None,
            (true, true) => Coverage::Full,
            (true, false) => Coverage::Partial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FILE: &str = "\
# anonymous
topic read public/#
topic   write   anon/in

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic shared

user bob
topic read alice/news
pattern write devices/%c/up
pattern read users/%u/#
user alice
topic read extra
";

    fn acl() -> AclFile {
        AclFile::parse(FILE).unwrap()
    }

    #[test]
    fn sections_and_patterns() {
        let a = acl();
        assert_eq!(a.anonymous_rules().len(), 2);
        assert_eq!(a.user_rules("alice").len(), 4, "both alice sections add up");
        assert_eq!(a.user_rules("bob").len(), 1);
        assert_eq!(
            a.patterns().len(),
            2,
            "patterns are global wherever they stand"
        );
        assert_eq!(a.len(), 9);
        assert_eq!(a.user_rules("alice")[2].access, Access::READWRITE);
    }

    #[test]
    fn anonymous_gets_only_rules_before_the_first_user_line_and_no_percent_u() {
        let c = acl().for_client(None, "c1");
        assert!(c.can_read("public/x"));
        assert!(!c.can_write("public/x"));
        assert!(c.can_write("anon/in"));
        assert!(c.can_write("devices/c1/up"));
        assert!(!c.can_write("devices/c2/up"));
        assert!(!c.can_read("users//x"), "%u rules skip anonymous clients");
        assert!(!c.can_read("alice/x"));
    }

    #[test]
    fn deny_wins_and_patterns_substitute() {
        let c = acl().for_client(Some("alice"), "dev7");
        assert!(c.can_write("alice/a/b"));
        assert!(!c.can_read("alice/secret/x"));
        assert!(!c.can_write("alice/secret"));
        assert!(c.can_read("shared") && c.can_write("shared"));
        assert!(c.can_read("users/alice/inbox"));
        assert!(!c.can_read("users/bob/inbox"));
        assert!(c.can_write("devices/dev7/up"));
        assert!(!c.can_read("devices/dev7/up"));
        assert!(
            !c.can_read("public/x"),
            "a named user does not get anonymous rules"
        );
        let unknown = acl().for_client(Some("carol"), "x");
        assert!(unknown.can_read("users/carol/1"));
        assert!(!unknown.can_read("public/x"));
    }

    #[test]
    fn substitution_is_one_pass() {
        assert_eq!(substitute("d/%c/%u/%x%", "%u", "al"), "d/%u/al/%x%");
    }

    #[test]
    fn dangerous_ids_get_no_patterns() {
        for (u, c) in [(Some("alice"), "a/b"), (Some("a+"), "x"), (None, "#")] {
            let acl = acl().for_client(u, c);
            assert!(acl.rules().iter().all(|r| !r.filter.starts_with("devices")));
        }
    }

    #[test]
    fn subscription_coverage() {
        let c = acl().for_client(Some("alice"), "dev7");
        assert_eq!(c.subscription("alice/a/+"), Coverage::Full);
        assert_eq!(
            c.subscription("alice/#"),
            Coverage::Partial,
            "alice/secret is inside"
        );
        assert_eq!(c.subscription("alice/secret/+"), Coverage::None);
        assert_eq!(c.subscription("bob/#"), Coverage::None);
        assert_eq!(c.subscription("+/alice/#"), Coverage::Partial);
        assert_eq!(c.subscription("#"), Coverage::Partial);
        assert_eq!(c.subscription("$SYS/#"), Coverage::None);
        assert_eq!(
            c.subscription("devices/dev7/up"),
            Coverage::None,
            "write only"
        );
    }

    #[test]
    fn empty_file_denies_all_and_sys_needs_explicit_rules() {
        let c = AclFile::parse("").unwrap().for_client(Some("u"), "c");
        assert!(!c.can_read("a") && !c.can_write("a"));
        let c = AclFile::parse("topic #\n").unwrap().for_client(None, "c");
        assert!(c.can_read("a/b"));
        assert!(!c.can_read("$SYS/broker/uptime"));
        let c = AclFile::parse("topic read $SYS/#\n")
            .unwrap()
            .for_client(None, "c");
        assert!(c.can_read("$SYS/broker/uptime"));
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        for (text, line) in [
            ("user\n", 1),
            ("topic\n", 1),
            ("\ntopic readit a/b\n", 2),
            ("topic read a/#/b\n", 1),
            ("topik a\n", 1),
        ] {
            assert_eq!(AclFile::parse(text).unwrap_err().line, line, "{text:?}");
        }
        // Mosquitto's quirk: a single word after `topic` is the topic.
        let a = AclFile::parse("topic read\n").unwrap();
        assert_eq!(a.anonymous_rules()[0].filter, "read");
        // Topics may contain spaces.
        let a = AclFile::parse("topic write a b/c d\n").unwrap();
        assert_eq!(a.anonymous_rules()[0].filter, "a b/c d");
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let level = prop::sample::select(vec!["a", "b", "+", "$s"]);
        let access = prop::sample::select(vec![
            Access::DENY,
            Access::READ,
            Access::WRITE,
            Access::READWRITE,
        ]);
        (prop::collection::vec(level, 1..4), any::<bool>(), access).prop_map(
            |(mut l, hash, access)| {
                if hash {
                    l.push("#");
                }
                Rule {
                    filter: l.join("/"),
                    access,
                }
            },
        )
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "+", "$s"]);
        (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(mut l, hash)| {
            if hash {
                l.push("#");
            }
            l.join("/")
        })
    }

    fn topics() -> Vec<String> {
        let alphabet = ["a", "b", "$s", "z"];
        let mut all = Vec::new();
        let mut layer: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            all.extend(layer.iter().cloned());
            layer = layer
                .iter()
                .flat_map(|t| alphabet.iter().map(move |l| format!("{t}/{l}")))
                .collect();
        }
        all
    }

    proptest! {
        /// `Full` never lets through a topic the per-message check would refuse, and `None` never
        /// refuses a subscription through which some readable topic could arrive.
        #[test]
        fn coverage_is_sound(rules in prop::collection::vec(rule(), 0..5), f in filter()) {
            let acl = ClientAcl::from_rules(rules);
            let matched: Vec<String> = topics()
                .into_iter()
                .filter(|t| topic::matches(&f, t))
                .collect();
            match acl.subscription(&f) {
                Coverage::Full => prop_assert!(matched.iter().all(|t| acl.can_read(t))),
                Coverage::None => prop_assert!(!matched.iter().any(|t| acl.can_read(t))),
                Coverage::Partial => {}
            }
        }
    }
}
