//! Compiles `sockfleet/v1/*.proto` with a vendored `protoc`, so building needs no system protobuf.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["sockfleet/v1/ingest.proto", "sockfleet/v1/query.proto"];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sockfleet_descriptor.bin"))
        .compile_protos(
            &protos.map(PathBuf::from),
            &[PathBuf::from("."), well_known],
        )?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
