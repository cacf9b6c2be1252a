//! Generates the krpc.v1 code with protox (a pure-Rust protobuf compiler): no `protoc` needed.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=krpc.proto");
    let fds = protox::compile(["krpc.proto"], ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set feeds gRPC server reflection.
    std::fs::write(out.join("krpc_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: zero-copy slices of the received buffer.
        .bytes(".krpc.v1")
        // Requests decode through the pooled codec (src/codec.rs).
        .codec_path("crate::codec::PooledCodec")
        .compile_fds(fds)?;
    Ok(())
}
