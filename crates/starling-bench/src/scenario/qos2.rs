//! `qos2`: exactly-once delivery to a persistent subscriber that drops its connection.
//!
//! ```text
//! P publishers ──QoS 2──▶ broker ──QoS 2──▶ subscriber (clean session 0, fixed client id)
//!                                             │ after every total/(R+1) messages:
//!                                             │   odd drops:  close without writing the pending
//!                                             │               PUBREC/PUBCOMP (broker must resend)
//!                                             │   even drops: write them, then close
//!                                             └─ reconnect (clean 0): session must be present
//! ```
//!
//! The subscriber is a strict QoS 2 receiver (`super::flow::Receiver`): it keeps the packet ids
//! awaiting PUBREL across connections, answers a repeated PUBLISH for such an id with PUBREC
//! without delivering it again, and counts each message once. A correct broker gives 0 lost and
//! 0 duplicated.

use std::sync::Arc;
use std::time::Duration;

use starling_codec::QoS;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until};

use super::flow::{
    add_publishers, add_receivers, connect_all, run_publishers, spawn_progress, PubSpec, Receiver,
};
use super::{record_error, Ctx, RunArgs};
use crate::gate::Gate;
use crate::mqtt::Conn;
use crate::stats::{Qos2Stats, Summary};
use crate::BenchError;

/// The persistent subscriber across its reconnects.
async fn persistent_subscriber(
    ctx: Arc<Ctx>,
    conn: Conn,
    gate: Arc<Gate>,
    done: watch::Receiver<bool>,
    filter: String,
) -> (Receiver, Qos2Stats, Option<BenchError>) {
    let mut rx = Receiver::new(ctx.run_id, ctx.args.publishers);
    let mut st = Qos2Stats::default();
    let err = match subscriber_loop(&ctx, conn, &gate, done, &filter, &mut rx, &mut st).await {
        Ok(conn) => {
            conn.disconnect(ctx.deadline).await;
            None
        }
        Err(e) => Some(e),
    };
    st.resent_publishes = rx.resent_publishes;
    st.unknown_pubrels = rx.unknown_pubrels;
    (rx, st, err)
}

/// Receives until everything sent has arrived (or the drain or deadline ends it), dropping and
/// re-establishing the connection at each threshold; returns the last connection.
async fn subscriber_loop(
    ctx: &Ctx,
    mut conn: Conn,
    gate: &Gate,
    mut done: watch::Receiver<bool>,
    filter: &str,
    rx: &mut Receiver,
    st: &mut Qos2Stats,
) -> Result<Conn, BenchError> {
    let a = &ctx.args;
    let publishers: Vec<u32> = (0..a.publishers as u32).collect();
    let total = a.total_messages().unwrap_or(0);
    let step = total / (u64::from(a.reconnects) + 1);
    let idle = Duration::from_secs_f64(a.drain_idle);
    let client_id = ctx.client_id("q", 0);
    loop {
        // Decode what is buffered; at a reconnect threshold, drop the connection either before
        // or after writing the acks it produced.
        let now = ctx.now_ns();
        let mut new = 0;
        while let Some(p) = conn.next_packet()? {
            new += rx.on_packet(p, now, conn.wbuf())?;
        }
        let due = st.reconnects < a.reconnects
            && step > 0
            && rx.tracker.distinct() >= step * u64::from(st.reconnects + 1);
        if due && st.reconnects.is_multiple_of(2) {
            conn.wbuf().clear();
        } else {
            conn.flush(ctx.deadline).await?;
        }
        gate.record_received(0, new);
        if due {
            st.reconnects += 1;
            drop(conn);
            eprintln!(
                "[{}]   qos2: subscriber dropped its connection ({}/{}) at {} messages",
                a.label,
                st.reconnects,
                a.reconnects,
                rx.tracker.distinct()
            );
            let (c, ack) = Conn::connect(
                a.sub_addr(0),
                None,
                &client_id,
                false,
                a.keep_alive,
                ctx.deadline,
            )
            .await?;
            conn = c;
            if !ack.session_present {
                st.session_lost += 1;
                conn.subscribe(&[(filter, QoS::ExactlyOnce)], 1, ctx.deadline)
                    .await?;
            }
            continue;
        }
        if *done.borrow() && rx.distinct_from(&publishers) >= ctx.sent_by(&publishers) {
            return Ok(conn);
        }
        tokio::select! {
            res = conn.read_some() => { res?; }
            res = done.changed(), if !*done.borrow() => {
                if res.is_err() { return Ok(conn); }
            }
            _ = sleep(idle) => {
                if *done.borrow() { return Ok(conn); }
            }
            _ = sleep_until(ctx.deadline) => {
                return Err(BenchError::Timeout("qos2 subscriber: waiting for messages".into()));
            }
        }
    }
}

/// Runs the `qos2` scenario.
pub(crate) async fn run(args: RunArgs, s: &mut Summary) {
    let publishers = args.publishers;
    let ctx = Arc::new(Ctx::new(args, publishers));
    let a = &ctx.args;
    s.run_id = format!("{:016x}", ctx.run_id);
    s.publishers = a.publishers as u64;
    s.subscribers = 1;
    eprintln!(
        "[{}] qos2: {} publishers, persistent subscriber, {} reconnects, run {:016x}",
        a.label, a.publishers, a.reconnects, ctx.run_id
    );
    let prefix = ctx.prefix();
    let filter = format!("{prefix}/q2/+");
    let gate = Arc::new(Gate::new(1, a.max_ahead));
    let sub = async {
        let (mut c, _) = Conn::connect(
            a.sub_addr(0),
            None,
            &ctx.client_id("q", 0),
            false,
            a.keep_alive,
            ctx.deadline,
        )
        .await?;
        c.subscribe(&[(&filter, QoS::ExactlyOnce)], 1, ctx.deadline)
            .await?;
        Ok::<_, BenchError>(c)
    };
    let sub_conn = match sub.await {
        Ok(c) => c,
        Err(e) => return record_error(s, &e),
    };
    let pub_conns = match connect_all(&ctx, "p", vec![None; a.publishers], QoS::ExactlyOnce).await {
        Ok(c) => c,
        Err(e) => return record_error(s, &e),
    };
    let total = a.total_messages();
    let pacer = ctx.pacer();
    let specs: Vec<PubSpec> = (0..a.publishers)
        .map(|i| PubSpec {
            id: i as u32,
            of: a.publishers as u32,
            topic: format!("{prefix}/q2/{i}"),
            count: total
                .map(|t| t / a.publishers as u64 + u64::from((i as u64) < t % a.publishers as u64)),
            qos: QoS::ExactlyOnce,
            gate: gate.clone(),
            pacer: pacer.clone(),
        })
        .collect();
    let (done_tx, done_rx) = watch::channel(false);
    ctx.start_clock();
    let sub_task = tokio::spawn(persistent_subscriber(
        ctx.clone(),
        sub_conn,
        gate.clone(),
        done_rx,
        filter,
    ));
    let progress = spawn_progress(ctx.clone(), std::iter::once(gate.clone()));
    let mut pub_results = run_publishers(&ctx, pub_conns, specs).await;
    let _ = done_tx.send(true);
    let joined = sub_task.await;
    progress.abort();
    s.peak_outstanding = gate.peak_outstanding();
    let last_send = add_publishers(s, &mut pub_results);
    match joined {
        Ok((rx, st, err)) => {
            if let Some(e) = err {
                record_error(s, &e);
            }
            let pubs: Vec<u32> = (0..a.publishers as u32).collect();
            add_receivers(&ctx, s, &[(&rx, pubs.as_slice())], last_send);
            s.qos2 = Some(st);
        }
        Err(e) => record_error(s, &BenchError::Protocol(format!("subscriber task: {e}"))),
    }
}
