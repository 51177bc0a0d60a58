//! Per-connection security and limit state, as plain structs the connection actor calls.
//!
//! - [`Guard`]: the client's ACL (compiled from the authorizer at CONNECT, recompiled when the
//!   files are reloaded), its subscriptions with their [`Coverage`], and one-entry caches of the
//!   last publish and delivery decision. Deliveries are checked only while some subscription is
//!   not [`Coverage::Full`]: a client whose subscriptions are all fully readable (or a broker
//!   without an ACL file) pays nothing per message.
//! - [`TokenBucket`]: the per-client publish rate limit; when it runs dry the connection stops
//!   reading from the client for the time the next token takes (backpressure, nothing dropped).
//! - [`topic_limit`]: `max_topic_length` / `max_topic_levels`.
//!
//! `#[PerformanceCriticalPath]`: [`Guard::can_write`] runs per PUBLISH when an ACL file is
//! configured, [`Guard::can_read`] per delivery while a subscription is partially readable.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use starling_auth::{ClientAcl, Coverage};
use tokio::time::Instant;

use crate::config::BrokerConfig;
use crate::metrics::Limit;

/// Why a PUBLISH is dropped or a subscription refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client's ACL does not allow it.
    Acl,
    /// A configured limit bit.
    Limit(Limit),
}

/// A client's ACL and subscriptions.
pub(crate) struct Guard {
    username: Option<ByteString>,
    /// `None`: no ACL file (everything allowed); only subscriptions are counted.
    acl: Option<ClientAcl>,
    /// The authorizer generation `acl` was compiled from.
    generation: u64,
    /// Every filter subscribed, with what the ACL lets through it.
    subs: Vec<(Arc<str>, Coverage)>,
    /// Some subscription is not fully readable: check each delivery.
    check_delivery: bool,
    last_write: Option<(ByteString, bool)>,
    last_read: Option<(ByteString, bool)>,
}

impl Guard {
    pub(crate) fn new(
        username: Option<ByteString>,
        acl: Option<ClientAcl>,
        generation: u64,
    ) -> Guard {
        Guard {
            username,
            acl,
            generation,
            subs: Vec::new(),
            check_delivery: false,
            last_write: None,
            last_read: None,
        }
    }

    /// The user name the ACL was compiled for.
    pub(crate) fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// True if `generation` is newer than the one the ACL came from.
    pub(crate) fn is_stale(&self, generation: u64) -> bool {
        self.acl.is_some() && self.generation != generation
    }

    /// Installs a recompiled ACL (after a reload) and reclassifies the subscriptions.
    pub(crate) fn refresh(&mut self, acl: Option<ClientAcl>, generation: u64) {
        self.acl = acl;
        self.generation = generation;
        self.last_read = None;
        self.last_write = None;
        let subs = std::mem::take(&mut self.subs);
        self.subs = subs
            .into_iter()
            .map(|(f, _)| {
                let c = self.classify(&f);
                (f, c)
            })
            .collect();
        self.update_check();
    }

    fn update_check(&mut self) {
        self.check_delivery = self.subs.iter().any(|(_, c)| *c != Coverage::Full);
    }

    /// What the ACL lets through a subscription to `filter`.
    pub(crate) fn classify(&self, filter: &str) -> Coverage {
        self.acl
            .as_ref()
            .map_or(Coverage::Full, |a| a.subscription(filter))
    }

    /// Records a granted subscription (replacing one to the same filter).
    pub(crate) fn subscribed(&mut self, filter: Arc<str>, coverage: Coverage) {
        match self.subs.iter_mut().find(|(f, _)| *f == filter) {
            Some(s) => s.1 = coverage,
            None => self.subs.push((filter, coverage)),
        }
        self.update_check();
    }

    /// Forgets a subscription.
    pub(crate) fn unsubscribed(&mut self, filter: &str) {
        self.subs.retain(|(f, _)| &**f != filter);
        self.update_check();
    }

    /// Whether `filter` is subscribed already.
    pub(crate) fn has(&self, filter: &str) -> bool {
        self.subs.iter().any(|(f, _)| &**f == filter)
    }

    /// Subscriptions held.
    pub(crate) fn count(&self) -> usize {
        self.subs.len()
    }

    /// May the client publish to `topic`?
    pub(crate) fn can_write(&mut self, topic: &ByteString) -> bool {
        let Some(acl) = &self.acl else {
            return true;
        };
        if let Some((t, ok)) = &self.last_write {
            if t == topic {
                return *ok;
            }
        }
        let ok = acl.can_write(topic);
        self.last_write = Some((topic.clone(), ok));
        ok
    }

    /// May the client receive a message on `topic`? Free while every subscription is fully
    /// readable.
    pub(crate) fn can_read(&mut self, topic: &ByteString) -> bool {
        if !self.check_delivery {
            return true;
        }
        let Some(acl) = &self.acl else {
            return true;
        };
        if let Some((t, ok)) = &self.last_read {
            if t == topic {
                return *ok;
            }
        }
        let ok = acl.can_read(topic);
        self.last_read = Some((topic.clone(), ok));
        ok
    }

    /// May the client publish its will to `topic`? (Uncached.)
    pub(crate) fn can_write_will(&self, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|a| a.can_write(topic))
    }
}

/// The limit a topic name or filter breaks, if any.
#[inline]
pub(crate) fn topic_limit(config: &BrokerConfig, topic: &str) -> Option<Limit> {
    if topic.len() > config.max_topic_length {
        return Some(Limit::MaxTopicLength);
    }
    if config.max_topic_levels > 0
        && topic.bytes().filter(|b| *b == b'/').count() >= config.max_topic_levels
    {
        return Some(Limit::MaxTopicLevels);
    }
    None
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; `burst` 0 means one second's worth.
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(rate.max(1));
        let burst = if burst == 0 { rate } else { f64::from(burst) };
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token for one PUBLISH (which has arrived already). Returns how long to stop
    /// reading when the bucket cannot pay for the next one.
    pub(crate) fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_auth::AclFile;

    fn guard() -> Guard {
        let acl = AclFile::parse("user u\ntopic read a/#\ntopic deny a/secret\ntopic write out\n")
            .unwrap()
            .for_client(Some("u"), "c");
        Guard::new(Some("u".into()), Some(acl), 1)
    }

    #[test]
    fn deliveries_are_checked_only_while_a_subscription_is_partial() {
        let mut g = guard();
        let secret = ByteString::from("a/secret");
        assert_eq!(g.classify("a/+/x"), Coverage::Full);
        g.subscribed("a/+/x".into(), Coverage::Full);
        assert!(g.can_read(&secret), "no partial subscription: no check");
        assert_eq!(g.classify("a/#"), Coverage::Partial);
        g.subscribed("a/#".into(), Coverage::Partial);
        assert!(!g.can_read(&secret));
        assert!(g.can_read(&"a/b".into()));
        g.unsubscribed("a/#");
        assert!(g.can_read(&secret));
        assert_eq!(g.count(), 1);
        assert!(g.has("a/+/x") && !g.has("a/#"));
    }

    #[test]
    fn write_checks_and_cache() {
        let mut g = guard();
        let out = ByteString::from("out");
        assert!(g.can_write(&out));
        assert!(g.can_write(&out), "cached");
        assert!(!g.can_write(&"a/b".into()));
        assert!(g.can_write_will("out") && !g.can_write_will("in"));
        let mut open = Guard::new(None, None, 1);
        assert!(open.can_write(&"x".into()) && open.can_read(&"x".into()));
        assert!(!open.is_stale(9), "no ACL file: nothing to refresh");
    }

    #[test]
    fn refresh_reclassifies() {
        let mut g = guard();
        g.subscribed("b/#".into(), Coverage::None);
        assert!(g.is_stale(2));
        let acl = AclFile::parse("user u\ntopic read b/#\n")
            .unwrap()
            .for_client(Some("u"), "c");
        g.refresh(Some(acl), 2);
        assert!(!g.is_stale(2));
        assert!(g.can_read(&"b/x".into()));
        assert!(!g.check_delivery, "b/# is now fully readable");
    }

    #[test]
    fn topic_limits() {
        let mut c = BrokerConfig {
            max_topic_length: 5,
            ..BrokerConfig::default()
        };
        assert_eq!(topic_limit(&c, "abcde"), None);
        assert_eq!(topic_limit(&c, "abcdef"), Some(Limit::MaxTopicLength));
        c.max_topic_length = 100;
        c.max_topic_levels = 3;
        assert_eq!(topic_limit(&c, "a/b/c"), None);
        assert_eq!(topic_limit(&c, "a/b/c/d"), Some(Limit::MaxTopicLevels));
        assert_eq!(topic_limit(&c, "/b/"), None, "three (empty) levels");
    }

    #[test]
    fn token_bucket_pauses_for_the_next_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        let pause = b
            .take(t0)
            .expect("third of a burst of 3 empties the bucket");
        assert!((pause.as_secs_f64() - 0.1).abs() < 1e-6, "{pause:?}");
        // After the pause one token is there again: one more publish, then a pause.
        let t1 = t0 + pause;
        assert!(b.take(t1).is_some());
        // A long quiet time refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.take(t2), None);
        assert_eq!(b.take(t2), None);
        assert!(b.take(t2).is_some());
    }
}
