//! Socket IO of a connection, as two futures living in the actor's context.
//!
//! actix polls a context's mailbox first and its futures after, so everything the handlers of one
//! mailbox pass write to `wbuf` leaves in one `write` syscall ([`Writer`]). [`Reader`] reads,
//! decodes and handles a budget of packets per poll, then yields to the mailbox; between bursts
//! its buffer is released, so an idle connection holds no read or write buffer.
//!
//! Plain TCP (the common case) is read and written by readiness (`poll_read_ready` +
//! `try_read_buf`, `poll_write_ready` + `try_write`); TLS and WebSocket streams go through
//! [`Stream`]'s poll methods, into and out of the same buffers.
//!
//! `#[PerformanceCriticalPath]`

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::prelude::*;
use bytes::Buf;
use tokio::time::Instant;

use super::lifecycle::CloseReason;
use super::transport::Stream;
use super::{Connection, Phase};
use crate::metrics::Counters;

/// Packets handled per poll before yielding to the mailbox.
const READ_BUDGET: usize = 64;
/// Read chunk.
const READ_CHUNK: usize = 8 * 1024;

/// Reads and handles packets.
pub(super) struct Reader;

impl ActorFuture<Connection> for Reader {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Connection,
        ctx: &mut Context<Connection>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        act.remember_waker(cx);
        let mut handled = 0;
        loop {
            if act.phase == Phase::Closing {
                act.flush_routes(ctx);
                return Poll::Ready(());
            }
            if ctx.waiting() || act.read_paused() {
                act.flush_routes(ctx);
                return Poll::Pending;
            }
            if handled >= READ_BUDGET {
                act.flush_routes(ctx);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match act.decoder.decode(&mut act.rbuf) {
                Ok(Some(packet)) => {
                    handled += 1;
                    act.on_packet(packet, ctx);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    act.on_decode_error(e, ctx);
                    continue;
                }
            }
            let Stream::Tcp(tcp) = &act.stream else {
                if act.rbuf.capacity() - act.rbuf.len() < 1024 {
                    act.rbuf.reserve(READ_CHUNK);
                }
                match act.stream.poll_read_other(cx, &mut act.rbuf) {
                    Poll::Pending => {
                        if act.rbuf.is_empty() && act.rbuf.capacity() > 0 {
                            act.rbuf = bytes::BytesMut::new();
                        }
                        act.flush_routes(ctx);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(0)) => act.close(CloseReason::Eof, ctx),
                    Poll::Ready(Ok(n)) => {
                        Counters::add(&act.worker.counters.bytes_received, n as u64);
                        act.last_read = Instant::now();
                    }
                    Poll::Ready(Err(e)) => act.close(CloseReason::SocketError(e.kind()), ctx),
                }
                continue;
            };
            match tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    if act.rbuf.is_empty() && act.rbuf.capacity() > 0 {
                        act.rbuf = bytes::BytesMut::new();
                    }
                    act.flush_routes(ctx);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    act.close(CloseReason::SocketError(e.kind()), ctx);
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            if act.rbuf.capacity() - act.rbuf.len() < 1024 {
                act.rbuf.reserve(READ_CHUNK);
            }
            match tcp.try_read_buf(&mut act.rbuf) {
                Ok(0) => act.close(CloseReason::Eof, ctx),
                Ok(n) => {
                    Counters::add(&act.worker.counters.bytes_received, n as u64);
                    act.last_read = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => act.close(CloseReason::SocketError(e.kind()), ctx),
            }
        }
    }
}

/// Writes `wbuf` out whenever it holds something.
pub(super) struct Writer;

impl ActorFuture<Connection> for Writer {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Connection,
        ctx: &mut Context<Connection>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        act.remember_waker(cx);
        loop {
            if act.wbuf.is_empty() {
                if act.wbuf.capacity() > 0 {
                    act.wbuf = bytes::BytesMut::new();
                }
                if !act.stream.is_tcp() {
                    // TLS records / WebSocket frames still buffered below us.
                    if let Poll::Ready(Err(e)) = act.stream.poll_flush_other(cx) {
                        act.close(CloseReason::SocketError(e.kind()), ctx);
                    }
                    if act.phase == Phase::Closing
                        && act.stream.poll_shutdown_other(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                }
                if act.phase == Phase::Closing {
                    ctx.stop();
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
            let Stream::Tcp(tcp) = &act.stream else {
                match act.stream.poll_write_other(cx, &mut act.wbuf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(n)) => {
                        Counters::add(&act.worker.counters.bytes_sent, n as u64);
                    }
                    Poll::Ready(Err(e)) => {
                        act.wbuf.clear();
                        act.close(CloseReason::SocketError(e.kind()), ctx);
                    }
                }
                continue;
            };
            match tcp.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    act.wbuf.clear();
                    act.close(CloseReason::SocketError(e.kind()), ctx);
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            match tcp.try_write(&act.wbuf) {
                Ok(n) => {
                    Counters::add(&act.worker.counters.bytes_sent, n as u64);
                    act.wbuf.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    act.wbuf.clear();
                    act.close(CloseReason::SocketError(e.kind()), ctx);
                }
            }
        }
    }
}
