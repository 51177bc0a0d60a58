//! Generates Rust types from `proto/` with a vendored `protoc`, so that a fresh machine with only
//! the Rust toolchain can build. `PROTOC` is set for this build script only: exporting it for the
//! whole build would break raft-proto's own build script (see docs/development.md).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        root.join("starling/state/v1/state.proto"),
        root.join("starling/cluster/v1/cluster.proto"),
    ];
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&protos, std::slice::from_ref(&root))?;
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}
