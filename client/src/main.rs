//! `krpc`: one-off calls to a krpc-server (echo, put, get, info).

use std::{process::ExitCode, time::Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use krpc_client::{
    TlsArgs,
    v1::{EchoRequest, GetRequest, InfoRequest, PutRequest, TlsMode},
};

/// Call a krpc-server.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Server address, host:port.
    #[arg(long, global = true, default_value = "127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a payload and print what comes back.
    Echo {
        /// Payload (ignored with --size).
        #[arg(default_value = "hello")]
        payload: String,
        /// Routing key.
        #[arg(long, default_value = "")]
        key: String,
        /// Send this many RPCs on one connection and check every reply byte for byte.
        #[arg(long, default_value_t = 1)]
        repeat: u64,
        /// Send pseudo-random payloads of this many bytes (a different one per RPC).
        #[arg(long)]
        size: Option<usize>,
    },
    /// Store a value under a key.
    Put { key: String, value: String },
    /// Print the value stored under a key (exit status 1 when there is none).
    Get { key: String },
    /// Describe the server and this connection.
    Info,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return krpc_telemetry::usage_error("krpc", e),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("krpc: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("krpc: error: {}", krpc_telemetry::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let connector = cli.tls.connector()?;
    let mut client = krpc_client::connect(&cli.addr, connector).await?;
    match cli.command {
        Command::Echo {
            payload,
            key,
            repeat,
            size,
        } => {
            let key = Bytes::from(key);
            if repeat <= 1 && size.is_none() {
                let reply = client
                    .echo(EchoRequest {
                        key,
                        payload: Bytes::from(payload),
                    })
                    .await
                    .context("Echo failed")?;
                println!("{}", String::from_utf8_lossy(&reply.into_inner().payload));
                return Ok(ExitCode::SUCCESS);
            }
            let started = Instant::now();
            for i in 0..repeat {
                let payload = match size {
                    Some(size) => pseudo_random(i, size),
                    None => Bytes::from(payload.clone()),
                };
                let reply = client
                    .echo(EchoRequest {
                        key: key.clone(),
                        payload: payload.clone(),
                    })
                    .await
                    .with_context(|| format!("Echo #{i} failed"))?
                    .into_inner();
                if reply.payload != payload {
                    bail!(
                        "Echo #{i}: reply differs from the payload ({} bytes sent, {} received)",
                        payload.len(),
                        reply.payload.len()
                    );
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{repeat} Echo RPCs, every reply identical to its payload, {secs:.2} s ({:.0} RPC/s)",
                repeat as f64 / secs
            );
        }
        Command::Put { key, value } => {
            let reply = client
                .put(PutRequest {
                    key: Bytes::from(key),
                    value: Bytes::from(value),
                })
                .await
                .context("Put failed")?
                .into_inner();
            println!("{}", if reply.replaced { "replaced" } else { "stored" });
        }
        Command::Get { key } => {
            let reply = client
                .get(GetRequest {
                    key: Bytes::from(key.clone()),
                })
                .await
                .context("Get failed")?
                .into_inner();
            if !reply.found {
                eprintln!("krpc: {key:?} not found");
                return Ok(ExitCode::FAILURE);
            }
            println!("{}", String::from_utf8_lossy(&reply.value));
        }
        Command::Info => {
            let info = client
                .info(InfoRequest {})
                .await
                .context("Info failed")?
                .into_inner();
            let mode = TlsMode::try_from(info.tls_mode).map_or("unknown", |m| match m {
                TlsMode::Off => "off",
                TlsMode::Rustls => "rustls",
                TlsMode::Ktls => "ktls",
                TlsMode::Unspecified => "unspecified",
            });
            println!("version:         {}", info.version);
            println!("runtime:         {} ({} cores)", info.runtime, info.cores);
            println!("configured tls:  {}", info.configured_tls);
            println!("connection tls:  {mode}");
            println!("tls version:     {}", or_dash(&info.tls_version));
            println!("cipher:          {}", or_dash(&info.cipher));
            println!("ktls:            {}", if info.ktls { "on" } else { "off" });
            if info.ktls_available {
                println!("ktls available:  yes");
            } else {
                println!("ktls available:  no ({})", info.ktls_unavailable_reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Deterministic, distinct payload per RPC index (xorshift64*), so a reply mixed up with
/// another RPC's is caught.
fn pseudo_random(index: u64, size: usize) -> Bytes {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}
