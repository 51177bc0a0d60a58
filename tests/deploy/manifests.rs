//! The deployment manifests, checked without Docker or Kubernetes: the configuration each
//! StatefulSet pod (and each compose service) ends up with — ConfigMap file, then the
//! container's environment with Kubernetes' `$(VAR)` expansion — parsed by the broker's own
//! `ClusterConfig`, and the node id and peer list the binary derives from it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use starling_cluster::ClusterConfig;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(path: &str) -> Vec<Yaml> {
    let p = repo().join(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

/// Kubernetes' dependent environment variables: `$(NAME)` is replaced by an earlier variable's
/// value, `$$` escapes, an unknown reference stays as it is.
fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(tail) = rest.strip_prefix("$$") {
            out.push('$');
            rest = tail;
        } else if let Some(end) = rest.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &rest[2..2 + end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&rest[..3 + end]),
            }
            rest = &rest[3 + end..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `STARLING_CLUSTER_<KEY>` overrides as the binary applies them (lists comma-separated).
fn apply_cluster_env(table: &mut toml::Table, env: &BTreeMap<String, String>) {
    let cluster = table
        .entry("cluster")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[cluster] is a table");
    for (k, v) in env {
        let Some(key) = k.strip_prefix("STARLING_CLUSTER_") else {
            continue;
        };
        let key = key.to_lowercase();
        let value = match key.as_str() {
            "peers" => toml::Value::Array(
                v.split(',')
                    .map(|p| toml::Value::String(p.trim().into()))
                    .collect(),
            ),
            "node_id" => toml::Value::Integer(v.parse().expect("node id")),
            _ => toml::Value::String(v.clone()),
        };
        cluster.insert(key, value);
    }
}

/// The `[cluster]` settings a pod runs with.
fn cluster_config(file: &str, env: &BTreeMap<String, String>) -> ClusterConfig {
    let mut table: toml::Table = file.parse().expect("starling.toml parses");
    apply_cluster_env(&mut table, env);
    table
        .get("cluster")
        .cloned()
        .expect("[cluster]")
        .try_into()
        .expect("[cluster] has only keys the broker knows")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn statefulset_pods_get_node_ids_and_peers_from_ordinal_and_headless_dns() {
    let sts_docs = load("deploy/k8s/statefulset.yaml");
    let sts = find(&sts_docs, "StatefulSet", "starling");
    let cm_docs = load("deploy/k8s/configmap.yaml");
    let cm = find(&cm_docs, "ConfigMap", "starling-config");
    let svc_docs = load("deploy/k8s/services.yaml");
    let pdb_docs = load("deploy/k8s/pdb.yaml");

    let name = s(&sts["metadata"]["name"]);
    let namespace = s(&sts["metadata"]["namespace"]);
    let spec = &sts["spec"];
    let replicas = spec["replicas"].as_i64().expect("replicas") as u64;
    let headless = s(&spec["serviceName"]);
    assert_eq!(replicas, 3);
    assert_eq!(s(&spec["podManagementPolicy"]), "Parallel");

    let svc = find(&svc_docs, "Service", headless);
    assert_eq!(
        s(&svc["spec"]["clusterIP"]),
        "None",
        "the peer Service is headless"
    );
    assert_eq!(
        svc["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );

    let pdb = find(&pdb_docs, "PodDisruptionBudget", "starling");
    assert_eq!(
        pdb["spec"]["minAvailable"].as_i64(),
        Some((replicas / 2 + 1) as i64),
        "the PDB keeps a majority"
    );

    let pod = &spec["template"]["spec"];
    assert!(
        pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 30,
        "room for the 5 s leadership transfer and the broker's shutdown"
    );
    let container = &pod["containers"][0];
    let ports: BTreeMap<&str, u16> = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_i64().unwrap() as u16))
        .collect();
    assert_eq!(
        s(&container["readinessProbe"]["httpGet"]["path"]),
        "/readyz"
    );
    assert_eq!(s(&container["readinessProbe"]["httpGet"]["port"]), "admin");
    assert_eq!(
        s(&container["livenessProbe"]["httpGet"]["path"]),
        "/healthz"
    );
    assert_eq!(
        s(&spec["volumeClaimTemplates"][0]["metadata"]["name"]),
        "data"
    );

    let file = s(&cm["data"]["starling.toml"]);
    let mut seen = Vec::new();
    for ordinal in 0..replicas {
        let pod_name = format!("{name}-{ordinal}");
        // The container's environment as the kubelet renders it for this pod.
        let mut env = BTreeMap::new();
        for e in container["env"].as_vec().unwrap() {
            let key = s(&e["name"]).to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else {
                match s(&e["valueFrom"]["fieldRef"]["fieldPath"]) {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => namespace.to_string(),
                    other => panic!("unexpected fieldRef {other}"),
                }
            };
            env.insert(key, value);
        }
        let c = cluster_config(file, &env);
        // The pod's host name is its name.
        let id = c
            .resolve_node_id(&pod_name)
            .expect("node id from the pod name");
        assert_eq!(id, ordinal + 1, "{pod_name}");
        let peers = c.peer_list().expect("peers parse");
        let expected: Vec<(u64, String)> = (0..replicas)
            .map(|o| (o + 1, format!("{name}-{o}.{headless}:{}", ports["raft"])))
            .collect();
        assert_eq!(
            peers, expected,
            "{pod_name}: peers are the headless DNS names"
        );
        assert_eq!(
            c.advertised(),
            expected[ordinal as usize].1,
            "{pod_name} advertises its own peer entry"
        );
        assert_eq!(c.listen.port(), ports["raft"]);
        assert_eq!(port_of(&c.admin_listen), ports["admin"]);
        assert!(c.bootstrap, "founding members bootstrap on empty volumes");
        // Peer authentication: the secret file is the mounted Secret's cluster-secret key.
        assert_eq!(c.secret_file, "/etc/starling/secret/cluster-secret");
        assert!(!c.insecure);
        seen.push((id, peers));
    }
    eprintln!("rendered: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].1 == w[1].1),
        "same peer list everywhere"
    );
}

#[test]
fn compose_services_get_node_ids_and_peers_from_host_names() {
    let docs = load("deploy/compose/docker-compose.yml");
    let file = std::fs::read_to_string(repo().join("deploy/compose/starling.toml")).unwrap();
    let services = docs[0]["services"].as_hash().expect("services");
    assert_eq!(services.len(), 3);
    for ordinal in 0..3u64 {
        let name = format!("starling-{ordinal}");
        let svc = &docs[0]["services"][name.as_str()];
        assert_eq!(s(&svc["hostname"]), name);
        let env: BTreeMap<String, String> = svc["environment"]
            .as_hash()
            .unwrap()
            .iter()
            .map(|(k, v)| (s(k).to_string(), s(v).to_string()))
            .collect();
        let c = cluster_config(&file, &env);
        assert_eq!(c.resolve_node_id(&name).unwrap(), ordinal + 1);
        let peers = c.peer_list().unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(
            peers[ordinal as usize],
            (ordinal + 1, format!("{name}:7946"))
        );
        assert_eq!(c.advertised(), format!("{name}:7946"));
        // Peer authentication: every node gets the secret from the caller's environment.
        assert!(
            c.secret.0.starts_with("${STARLING_CLUSTER_SECRET:?"),
            "compose service {name} must take STARLING_CLUSTER_SECRET: {:?}",
            env.get("STARLING_CLUSTER_SECRET")
        );
        assert!(!c.insecure);
        let volumes: Vec<&str> = svc["volumes"].as_vec().unwrap().iter().map(s).collect();
        assert!(
            volumes.contains(&format!("data-{ordinal}:/data").as_str()),
            "{volumes:?}"
        );
        assert!(
            svc["ports"]
                .as_vec()
                .unwrap()
                .iter()
                .all(|p| s(p).starts_with("127.0.0.1:")),
            "published on loopback only"
        );
    }
}

#[test]
fn kubernetes_env_expansion() {
    let env: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
    assert_eq!(expand("$(A).y:1", &env), "x.y:1");
    assert_eq!(expand("$$(A) $(B)", &env), "$(A) $(B)");
}
