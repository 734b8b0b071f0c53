//! Compiles the .proto files with a vendored protoc (unless `PROTOC` names another), so no
//! system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=proto");
    let mut config = tonic_prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(p) => config.protoc_executable(p),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Raft entries and forwarded proposals (hundreds of kilobytes each under load) decode
    // as slices of the received buffer instead of being copied out of it.
    config.bytes([".sealpost.v1.RaftBytes.data"]);
    // The messages the operator console answers with as JSON (none carries a payload).
    let mut builder = tonic_prost_build::configure();
    for m in [
        "NodeStatus",
        "StatusResponse",
        "MessageSummary",
        "RecipientStatus",
        "TimelineEvent",
        "TrackReply",
        "DeadLetter",
        "DeadLettersReply",
        "ReprocessAttempt",
        "ReprocessReply",
        "MessageSearchReply",
    ] {
        builder = builder.type_attribute(format!("sealpost.v1.{m}"), "#[derive(serde::Serialize)]");
    }
    builder
        .file_descriptor_set_path(out.join("sealpost_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/sealpost/v1/directory.proto",
                "proto/sealpost/v1/admin.proto",
                "proto/sealpost/v1/raft.proto",
                "proto/sealpost/v1/messaging.proto",
                "proto/sealpost/v1/relay.proto",
                "proto/sealpost/v1/audit.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
