//! A real network partition on loopback: one node's peer (Raft and forward) traffic is dropped
//! in both directions with `iptables`, while its MQTT port keeps working and every process keeps
//! running. Needs root, `iptables` and a cgroup v2 hierarchy; [`NetSplit::available`] says
//! whether this machine has them (the test that uses it is skipped otherwise, saying so).
//!
//! ```text
//!  INPUT  -p tcp --dport <its peer port>                    DROP   nobody reaches it
//!  OUTPUT -p tcp --sport <p> --dport <peer port>            DROP   its open connections out
//!  OUTPUT -m cgroup --path <its cgroup> --dports <peers>    DROP   any connection it opens later
//! ```
//! The node's process is moved into a cgroup of its own (`starling-split-<pid>` under the
//! cgroup v2 root) so that sockets it creates during the partition are matched; sockets it had
//! before keep their cgroup, hence the rules on their ports. Healing deletes the rules and moves
//! the process back; dropped packets are retransmitted and the streams resume.

use std::path::PathBuf;
use std::process::Command;

use starling_testkit::TestCluster;

/// An active partition of one node; healed when dropped.
pub(crate) struct NetSplit {
    rules: Vec<Vec<String>>,
    cgroup: PathBuf,
    /// The cgroup the process was in.
    home: PathBuf,
    pid: u32,
    healed: bool,
}

fn iptables(args: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where the cgroup v2 hierarchy is mounted.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Local ports of the established TCP connections of process `pid` to any of `peers`.
fn connections_of(pid: u32, peers: &[u16]) -> Result<Vec<(u16, u16)>, String> {
    let out = Command::new("ss")
        .args(["-tnpH", "state", "established"])
        .output()
        .map_err(|e| format!("ss: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("pid={pid},");
    Ok(text
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            let addrs: Vec<&str> = l
                .split_whitespace()
                .filter(|t| t.contains(':') && !t.starts_with("users:"))
                .collect();
            let (local, peer) = (port_of(addrs.first()?)?, port_of(addrs.get(1)?)?);
            peers.contains(&peer).then_some((local, peer))
        })
        .collect())
}

impl NetSplit {
    /// `Err(why)` unless this machine can partition a node (root, iptables, cgroup v2), or
    /// `STARLING_TEST_NETSPLIT=0`.
    pub(crate) fn available() -> Result<(), String> {
        if std::env::var("STARLING_TEST_NETSPLIT").is_ok_and(|v| v == "0") {
            return Err("STARLING_TEST_NETSPLIT=0".into());
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        if !root {
            return Err("not root".into());
        }
        iptables(&["-S".into(), "OUTPUT".into()])?;
        Command::new("ss")
            .arg("-V")
            .output()
            .map_err(|e| format!("ss: {e}"))?;
        let cg = cgroup2_root().ok_or("no cgroup v2 hierarchy")?;
        if !cg.join("cgroup.procs").exists() {
            return Err(format!("{}: no cgroup.procs", cg.display()));
        }
        Ok(())
    }

    /// Cuts node `id` off from every other node of `c`.
    pub(crate) fn cut(c: &TestCluster, id: u64) -> Result<NetSplit, String> {
        let node = c.node(id);
        let pid = node.process().pid().ok_or("node not running")?;
        let own = node.raft_addr().port();
        let peers: Vec<u16> = c
            .ids()
            .into_iter()
            .filter(|i| *i != id)
            .map(|i| c.node(i).raft_addr().port())
            .collect();
        let root = cgroup2_root().ok_or("no cgroup v2 hierarchy")?;
        let name = format!("starling-split-{pid}");
        let cgroup = root.join(&name);
        // "0::/path" is the process's place in the v2 hierarchy.
        let home = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("0::")
                        .map(|p| p.trim_start_matches('/').to_string())
                })
            })
            .map_or(root.clone(), |p| root.join(p));
        std::fs::create_dir_all(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
        let mut split = NetSplit {
            rules: Vec::new(),
            cgroup,
            home,
            pid,
            healed: false,
        };
        std::fs::write(split.cgroup.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid} into {name}: {e}"))?;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        let ports = peers
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let own = own.to_string();
        let mut rules = vec![
            s(&["INPUT", "-p", "tcp", "--dport", &own, "-j", "DROP"]),
            s(&[
                "OUTPUT",
                "-m",
                "cgroup",
                "--path",
                &name,
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                &ports,
                "-j",
                "DROP",
            ]),
        ];
        for (local, peer) in connections_of(pid, &peers)? {
            rules.push(s(&[
                "OUTPUT",
                "-p",
                "tcp",
                "--sport",
                &local.to_string(),
                "--dport",
                &peer.to_string(),
                "-j",
                "DROP",
            ]));
        }
        for r in rules {
            let mut add = vec!["-I".to_string()];
            add.extend(r.iter().cloned());
            iptables(&add)?;
            split.rules.push(r);
        }
        Ok(split)
    }

    /// Rules in force (for the report).
    pub(crate) fn rules(&self) -> usize {
        self.rules.len()
    }

    /// Ends the partition.
    pub(crate) fn heal(mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        if self.healed {
            return;
        }
        self.healed = true;
        for r in self.rules.drain(..).rev() {
            let mut del = vec!["-D".to_string()];
            del.extend(r);
            if let Err(e) = iptables(&del) {
                eprintln!("netsplit: {e}");
            }
        }
        // Back where it was (fails harmlessly if the process is gone), then remove ours.
        let _ = std::fs::write(self.home.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

impl Drop for NetSplit {
    fn drop(&mut self) {
        self.undo();
    }
}
