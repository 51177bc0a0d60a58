//! Process facts from `/proc` and the file-descriptor limit.
//!
//! CPU times come from `/proc/<pid>/stat` (fields 14 `utime` and 15 `stime`), which Linux
//! reports in `USER_HZ` ticks, fixed at 100 per second for user space.

use std::time::{Duration, Instant};

use crate::stats::RssStats;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`).
const USER_HZ: f64 = 100.0;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in force.
///
/// Without privileges the hard limit cannot be raised, so this is also the most connections (plus
/// a few descriptors) one process can hold.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => nofile_limit().0,
    }
}

/// The (soft, hard) `RLIMIT_NOFILE` of this process; (0, 0) if it cannot be read.
pub fn nofile_limit() -> (u64, u64) {
    rlimit::Resource::NOFILE.get().unwrap_or((0, 0))
}

/// Resident set size of `pid` in KiB (`VmRSS`), `None` if the process is gone.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU seconds of `pid` (this process for `None`).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field 14 is index 11 and field 15 index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The 1-minute load average (`/proc/loadavg`), to tell a quiet machine from a busy one.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`).
pub fn load_averages() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// 32 random bytes as hex: a fresh cluster secret per run.
pub use starling_testkit::cluster::random_secret;

/// Measures CPU and wall time of this process (and optionally of a broker) over an interval.
#[derive(Clone, Copy, Debug)]
pub struct CpuClock {
    wall: Instant,
    own: f64,
    broker: Option<(u32, f64)>,
}

/// What a [`CpuClock`] measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUsage {
    /// Wall seconds.
    pub wall_s: f64,
    /// This process's CPU seconds.
    pub own_cpu_s: f64,
    /// The broker's CPU seconds, if it was given and is still running.
    pub broker_cpu_s: Option<f64>,
}

impl CpuClock {
    /// Starts measuring now.
    pub fn start(broker_pid: Option<u32>) -> CpuClock {
        CpuClock {
            wall: Instant::now(),
            own: cpu_seconds(None).unwrap_or(0.0),
            broker: broker_pid.and_then(|p| cpu_seconds(Some(p)).map(|c| (p, c))),
        }
    }

    /// Usage since [`CpuClock::start`].
    pub fn stop(&self) -> CpuUsage {
        CpuUsage {
            wall_s: self.wall.elapsed().as_secs_f64(),
            own_cpu_s: cpu_seconds(None).unwrap_or(0.0) - self.own,
            broker_cpu_s: self
                .broker
                .and_then(|(p, c)| cpu_seconds(Some(p)).map(|now| now - c)),
        }
    }
}

/// Samples a process's RSS every 100 ms on a tokio task until stopped.
#[derive(Debug)]
pub struct RssSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<RssStats>,
}

impl RssSampler {
    /// Starts sampling `pid` (must be called inside a tokio runtime).
    pub fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let first = rss_kb(pid).unwrap_or(0);
            let mut s = RssStats {
                start_kb: first,
                max_kb: first,
                end_kb: first,
            };
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                if let Some(kb) = rss_kb(pid) {
                    s.max_kb = s.max_kb.max(kb);
                    s.end_kb = kb;
                }
            }
            if let Some(kb) = rss_kb(pid) {
                s.max_kb = s.max_kb.max(kb);
                s.end_kb = kb;
            }
            s
        });
        RssSampler { stop, task }
    }

    /// Stops sampling and returns the figures.
    pub async fn finish(self) -> Option<RssStats> {
        let _ = self.stop.send(true);
        self.task.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(rss_kb(std::process::id()).unwrap() > 0);
        assert!(cpu_seconds(None).is_some());
        assert!(nofile_limit().0 > 0);
        assert!(load_averages().is_some());
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
