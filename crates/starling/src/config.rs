//! The binary's configuration: embedded defaults, then a TOML file, then `STARLING_*` variables,
//! then flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use starling_broker::BrokerConfig;
use starling_cluster::ClusterConfig;

/// The embedded default configuration.
pub(crate) const DEFAULT_TOML: &str = include_str!("../starling.default.toml");

/// Everything `starling` reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) mqtt: BrokerConfig,
    pub(crate) storage: StorageConfig,
    pub(crate) cluster: ClusterConfig,
    pub(crate) log: LogConfig,
}

/// `[storage]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageConfig {
    pub(crate) persistence: bool,
    pub(crate) data_dir: PathBuf,
    pub(crate) fsync: Fsync,
    pub(crate) fsync_interval_ms: u64,
    pub(crate) queue_capacity: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            persistence: true,
            data_dir: PathBuf::from("starling-data"),
            fsync: Fsync::Always,
            fsync_interval_ms: 100,
            queue_capacity: 1024,
        }
    }
}

/// When commits are fsync'd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Fsync {
    Always,
    Interval,
}

/// `[log]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    pub(crate) format: LogFormat,
    pub(crate) level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
    Mosquitto,
}

/// Configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error(transparent)]
    Invalid(#[from] starling_broker::ConfigError),
}

/// Loads defaults, then `file`, then the environment.
pub(crate) fn load(
    file: Option<&Path>,
    env: impl Iterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let parse = |text: &str, origin: &str| {
        text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        })
    };
    let mut table = parse(DEFAULT_TOML, "embedded defaults")?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        merge(&mut table, parse(&text, &path.display().to_string())?);
    }
    apply_env(&mut table, env)?;
    let config: Config = toml::Value::Table(table)
        .try_into()
        .map_err(|e| ConfigError::Parse {
            origin: "configuration".into(),
            source: Box::new(e),
        })?;
    Ok(config)
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `STARLING_<SECTION>_<KEY>` for every key of the defaults, parsed as the default's type.
fn apply_env(
    table: &mut toml::Table,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let vars: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with("STARLING_")).collect();
    for (section, value) in table.iter_mut() {
        let toml::Value::Table(keys) = value else {
            continue;
        };
        for (key, current) in keys.iter_mut() {
            let var = format!("STARLING_{}_{}", section.to_uppercase(), key.to_uppercase());
            let Some((_, raw)) = vars.iter().find(|(k, _)| *k == var) else {
                continue;
            };
            let bad = |reason: &str| ConfigError::Env {
                var: var.clone(),
                reason: reason.into(),
            };
            *current = match current {
                toml::Value::Integer(_) => toml::Value::Integer(
                    raw.trim().parse().map_err(|_| bad("expected an integer"))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => return Err(bad("expected true or false")),
                }),
                toml::Value::Array(_) => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.into()))
                        .collect(),
                ),
                _ => toml::Value::String(raw.clone()),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_match_the_structs() {
        let c = load(None, std::iter::empty()).unwrap();
        assert_eq!(c.mqtt, BrokerConfig::default());
        assert_eq!(c.storage.fsync, Fsync::Always);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.cluster, ClusterConfig::default());
        c.mqtt.validate().unwrap();
    }

    #[test]
    fn file_then_environment_override() {
        let dir = std::env::temp_dir().join(format!("starling-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(
            &file,
            "[mqtt]\nmax_inflight = 7\nlisteners = [\"0.0.0.0:1884\"]\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        let env = vec![
            ("STARLING_MQTT_MAX_INFLIGHT".to_string(), "9".to_string()),
            (
                "STARLING_STORAGE_PERSISTENCE".to_string(),
                "false".to_string(),
            ),
            (
                "STARLING_MQTT_LISTENERS".to_string(),
                "127.0.0.1:1,127.0.0.1:2".to_string(),
            ),
        ];
        let c = load(Some(&file), env.into_iter()).unwrap();
        assert_eq!(c.mqtt.max_inflight, 9);
        assert!(!c.storage.persistence);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.mqtt.listeners.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn security_keys_from_file_and_environment() {
        use starling_broker::{Anonymous, Transport};
        let dir = std::env::temp_dir().join(format!("starling-config-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(
            &file,
            "[mqtt]\nallow_anonymous = true\nacl_file = \"/etc/acl\"\n\
             [[mqtt.listener]]\naddr = \"0.0.0.0:8883\"\ntransport = \"tls\"\n\
             cert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
             [[mqtt.listener]]\naddr = \"127.0.0.1:8080\"\ntransport = \"ws\"\n",
        )
        .unwrap();
        let c = load(Some(&file), std::iter::empty()).unwrap();
        assert_eq!(c.mqtt.allow_anonymous, Anonymous::Allow);
        assert_eq!(c.mqtt.acl_file(), Some(std::path::Path::new("/etc/acl")));
        assert_eq!(c.mqtt.password_file(), None);
        let kinds: Vec<Transport> = c.mqtt.listener.iter().map(|l| l.transport).collect();
        assert_eq!(kinds, vec![Transport::Tls, Transport::Ws]);
        c.mqtt.validate().unwrap();
        let env = vec![(
            "STARLING_MQTT_ALLOW_ANONYMOUS".to_string(),
            "false".to_string(),
        )];
        let c = load(None, env.into_iter()).unwrap();
        assert_eq!(c.mqtt.allow_anonymous, Anonymous::Deny);
        let env = vec![(
            "STARLING_MQTT_ALLOW_ANONYMOUS".to_string(),
            "maybe".to_string(),
        )];
        assert!(load(None, env.into_iter()).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = std::env::temp_dir().join(format!("starling-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(&file, "[mqtt]\nmax_infligth = 7\n").unwrap();
        assert!(matches!(
            load(Some(&file), std::iter::empty()),
            Err(ConfigError::Parse { .. })
        ));
        let env = vec![("STARLING_MQTT_MAX_INFLIGHT".to_string(), "many".to_string())];
        assert!(matches!(
            load(None, env.into_iter()),
            Err(ConfigError::Env { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
