//! The krpc.v1 protocol: messages and the `Bench` service, generated from `krpc.proto` at build
//! time without `protoc`, plus the encoded descriptor set that server reflection serves.

#![allow(unreachable_pub, missing_debug_implementations)] // generated code

pub mod codec;

/// Generated messages, client and server for package `krpc.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("krpc.v1");
}

/// `FileDescriptorSet` of `krpc.proto`, encoded, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/krpc_descriptor.bin"));

/// Fully qualified name of the benchmark service, as health checking and reflection report it.
pub const BENCH_SERVICE: &str = "krpc.v1.Bench";
