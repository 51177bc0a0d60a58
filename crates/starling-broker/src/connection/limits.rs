//! Where a limit or the ACL bites: the counter, one log line per client per ten seconds naming
//! the limit's configuration key, the `max_publish_rate` bucket that pauses reading, and the
//! ACL recompiled after a reload of the security files.

use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{info, warn};

use super::guard::TokenBucket;
use super::Connection;
use crate::metrics::{Counters, Limit, SecurityEvent};

impl Connection {
    /// Counts that a limit bit and logs it, at most once per ten seconds per client:
    /// `<what> for client <id> (limit <key>); <then>`.
    pub(super) fn limit_bit(&mut self, limit: Limit, what: &str, then: &str) {
        self.worker.counters.limit(limit);
        if !self.may_log() {
            return;
        }
        let key = limit.key();
        let name = self.name();
        warn!(client_id = %name, limit = key, "{what} for client {name} (limit {key}); {then}");
    }

    /// Counts `n` ACL refusals and logs them, at most once per ten seconds per client.
    pub(super) fn denied(&mut self, event: SecurityEvent, n: u64, what: &str, topic: &str) {
        Counters::add(&self.worker.counters.security[event as usize], n);
        if !self.may_log() {
            return;
        }
        let name = self.name();
        info!(client_id = %name, topic, event = event.name(), "{what} for client {name}: '{topic}' (acl_file)");
    }

    /// True at most once per ten seconds per client (for limit and ACL log lines).
    fn may_log(&mut self) -> bool {
        let now = Instant::now();
        let Some(s) = self.session.as_mut() else {
            return true;
        };
        let r = s.rates();
        if r.last_limit_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return false;
        }
        r.last_limit_log = Some(now);
        true
    }

    /// Recompiles the client's ACL if the security files were reloaded since.
    pub(super) fn refresh_guard(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(g) = s.guard.as_deref_mut() else {
            return;
        };
        let security = &self.worker.security;
        let generation = security.generation();
        if g.is_stale(generation) {
            let acl = security
                .authorizer()
                .client_acl(g.username(), s.flow.client_id());
            g.refresh(acl, generation);
        }
    }

    /// Counts and logs the moment the entries owed (QoS 1/2, and retained QoS 0 waiting for its
    /// commit) reach `max_inflight_in` (reading stops).
    pub(super) fn note_inflight_in(&mut self) {
        let max = self.worker.config.max_inflight_in;
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.flow.owed_acks() == max)
        {
            self.limit_bit(
                Limit::MaxInflightIn,
                "unacknowledged QoS 1/2 or retained PUBLISHes at the limit",
                "reading paused",
            );
        }
    }

    /// Takes a `max_publish_rate` token; with the bucket empty, stops reading from the client
    /// until the next token is due.
    pub(super) fn take_publish_token(&mut self, ctx: &mut Context<Self>) {
        let config = &self.worker.config;
        let (rate, burst) = (config.max_publish_rate, config.publish_burst);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let now = Instant::now();
        let r = s.rates();
        let bucket = r
            .bucket
            .get_or_insert_with(|| TokenBucket::new(rate, burst, now));
        let Some(pause) = bucket.take(now) else {
            return;
        };
        r.throttled = true;
        ctx.run_later(pause, |act, _| {
            if let Some(r) = act.session.as_mut().and_then(|s| s.rates.as_mut()) {
                r.throttled = false;
            }
            act.wake();
        });
        self.limit_bit(
            Limit::MaxPublishRate,
            "PUBLISH rate above the limit",
            "reading paused",
        );
    }
}
