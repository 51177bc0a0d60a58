//! `starling restore --backup FILE [--force]`: writes a backup exported by `GET /cluster/snapshot`
//! into this node's data directory, for its configured cluster (or as a single node), offline.
//! See `starling_cluster::restore` and docs/deploy.md, "Backups".

use std::path::PathBuf;
use std::process::ExitCode;

use starling_cluster::backup::Backup;
use starling_cluster::restore::{self, RestoreError, Target};

use crate::config::Config;
use crate::ConfigFlags;

/// `starling restore` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The backup file (`curl -o FILE http://NODE:8080/cluster/snapshot`).
    #[arg(long, value_name = "FILE")]
    pub(crate) backup: PathBuf,

    /// Replace the database of a data directory that is not empty (the node must be stopped).
    #[arg(long)]
    pub(crate) force: bool,

    #[command(flatten)]
    pub(crate) flags: ConfigFlags,
}

/// Runs the restore with the layered configuration `c`: exit code 0 when written, 1 when the
/// backup or the directory is refused or writing fails, 2 for a configuration error.
pub(crate) fn run(c: &Config, args: &RestoreArgs) -> ExitCode {
    let fail = |code: u8, msg: String| {
        eprintln!("starling restore: {msg}");
        ExitCode::from(code)
    };
    if !c.storage.persistence {
        return fail(
            2,
            "storage.persistence = false: there is no data directory to restore into".into(),
        );
    }
    let target = if c.cluster.enabled() {
        let node_id = match crate::node_id(c) {
            Ok(id) => id,
            Err(e) => return fail(2, e),
        };
        let peers = match c.cluster.peer_list() {
            Ok(p) => p,
            Err(e) => return fail(2, e.to_string()),
        };
        Target::Cluster { node_id, peers }
    } else {
        Target::Single
    };
    let bytes = match std::fs::read(&args.backup) {
        Ok(b) => b,
        Err(e) => return fail(1, format!("cannot read {}: {e}", args.backup.display())),
    };
    let backup = match Backup::decode(&bytes) {
        Ok(b) => b,
        Err(e) => return fail(1, format!("{}: {e}", args.backup.display())),
    };
    let dir = &c.storage.data_dir;
    match restore::restore(&backup, dir, &target, args.force) {
        Ok(r) => {
            let node = match &target {
                Target::Cluster { node_id, peers } => format!(
                    "node {node_id} of a cluster of {} ({})",
                    peers.len(),
                    peers
                        .iter()
                        .map(|(id, _)| id.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Target::Single => "a single node".to_string(),
            };
            println!(
                "restored {} as {node}: index {} term {}, {} sessions ({} were connected; they \
                 go offline with their wills published when the nodes start), {} retained \
                 messages, {} queued messages, state digest {:016x}",
                r.path.display(),
                r.index,
                r.term,
                r.stats.sessions,
                r.stats.connected,
                r.stats.retained_messages,
                r.stats.queued_messages,
                r.digest
            );
            if r.reassigned > 0 {
                println!(
                    "{} sessions were connected through nodes that are not members any more: \
                     the lowest member takes them offline when it starts",
                    r.reassigned
                );
            }
            if !r.undecodable.is_empty() {
                eprintln!(
                    "starling restore: warning: entries {:?} of the backup are not command \
                     batches and were skipped (as the exporting cluster skipped them)",
                    r.undecodable
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ RestoreError::Config(_)) => fail(2, e.to_string()),
        Err(e) => fail(1, e.to_string()),
    }
}
