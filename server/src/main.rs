//! `krpc-server`: parses flags, sets up logging, resolves the TLS mode and certificates, binds,
//! and serves until SIGTERM or Ctrl-C.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use krpc_server::{
    Handoff, Limits, RuntimeMode, Server, ServerInfo, Strategy, parse_nonzero_size, parse_size,
};
use krpc_transport::{
    Acceptor, DevCertPaths, DevCerts, Identity, KtlsOptions, KtlsSupport, ServerTls, TlsMode,
    TlsPath, read_ca_file,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `--features mimalloc`: mimalloc serves every allocation the pool does not.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// krpc gRPC server: small RPCs over TLS 1.3, in user space (rustls) or in the kernel (kTLS).
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate development certificates (CA, server, client) into a directory.
    GenCerts {
        /// Output directory.
        #[arg(long, default_value = "krpc-certs")]
        out: PathBuf,
        /// Extra server names (DNS names or IP addresses) besides localhost, 127.0.0.1 and ::1.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Ask the kernel whether it can carry TLS 1.3 records (kTLS); exit status 1 when not.
    ProbeKtls,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// TLS mode: off | rustls | ktls | auto (kTLS where the kernel supports it, else rustls).
    #[arg(long, default_value = "auto")]
    tls: TlsMode,
    /// Server certificate chain (PEM). Without it, development certificates are used.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Require client certificates issued by this CA (mTLS).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Where development certificates are kept (generated on first use).
    #[arg(long, env = "KRPC_DEV_CERTS")]
    dev_certs: Option<PathBuf>,
    /// thread-per-core (pinned current-thread runtimes, SO_REUSEPORT) or work-stealing.
    #[arg(long, default_value = "thread-per-core")]
    runtime: RuntimeMode,
    /// Number of cores to serve on (default: all available).
    #[arg(long)]
    cores: Option<usize>,
    /// kTLS: send a KeyUpdate once this many records went out under one key (default: the
    /// cipher's limit, 2^24 records for AES-GCM). Lower it to see rekeys in a test; at least 16.
    #[arg(long, value_parser = clap::value_parser!(u64).range(16..))]
    ktls_rekey_after: Option<u64>,
    /// Cut off clients that have not finished the TLS handshake in this time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Buffer pool free strategy: global | local | per-conn | per-core.
    #[arg(long, default_value = "per-core")]
    strategy: Strategy,
    /// none: keyed RPCs run where decoded; owner: Echo/Put/Get run on the core owning hash(key).
    #[arg(long, default_value = "none")]
    handoff: Handoff,
    /// A defer list holds at most this many buffers (1..=65534, what its packed head counts);
    /// the owner is kicked at half (kernel: net.core.skb_defer_max).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_534))]
    defer_max: u32,
    /// Slab memory a core may carve, and bytes its free lists may hold (e.g. 4MiB); past it,
    /// allocations fall back to the heap and frees go the allocator's way (both counted).
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pool_cap_bytes: usize,
    /// Largest request message accepted (e.g. 4MiB); larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, default_value = "4MiB", value_parser = parse_nonzero_size)]
    max_message_bytes: usize,
    /// Address of the Prometheus endpoint (GET /metrics); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:9100")]
    metrics_listen: SocketAddr,
    /// Log format: plain or json. Filter with RUST_LOG (default: info).
    #[arg(long, default_value = "plain", value_parser = ["plain", "json"])]
    log_format: String,
    #[command(flatten)]
    limits: Limits,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return krpc_telemetry::usage_error("krpc-server", e),
    };
    let result = match cli.command {
        Some(Command::GenCerts { out, names }) => gen_certs(&out, &names),
        Some(Command::ProbeKtls) => {
            let support = KtlsSupport::probe();
            return match support.unavailable_reason() {
                None => {
                    println!("kTLS: available ({})", support.describe());
                    ExitCode::SUCCESS
                }
                Some(reason) => {
                    println!("kTLS: unavailable: {reason}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {
            init_tracing(&cli.serve.log_format);
            serve(cli.serve)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "krpc-server: error: {}",
                krpc_telemetry::error_chain(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn gen_certs(out: &Path, names: &[String]) -> anyhow::Result<()> {
    let paths = DevCerts::generate(names)?.write(out)?;
    println!("wrote {}", paths.ca_cert.display());
    println!(
        "wrote {} and {}",
        paths.server_cert.display(),
        paths.server_key.display()
    );
    println!(
        "wrote {} and {}",
        paths.client_cert.display(),
        paths.client_key.display()
    );
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cores = args
        .cores
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
    if cores == 0 {
        bail!("--cores must be at least 1");
    }
    // The probe runs before any handshake: a kernel that refuses keys would lose the stream.
    let ktls = if args.tls == TlsMode::Off {
        KtlsSupport::unavailable("not probed (--tls off)")
    } else {
        KtlsSupport::probe()
    };
    let path = args.tls.resolve(&ktls)?;
    match (args.tls, ktls.unavailable_reason()) {
        (TlsMode::Auto, Some(reason)) => {
            warn!(%reason, "kTLS unavailable: serving with rustls (--tls auto)")
        }
        (TlsMode::Auto, None) => info!("kTLS available: serving with kTLS (--tls auto)"),
        _ => {}
    }

    let (acceptor, ca_hint) = match path {
        TlsPath::Off => (Acceptor::plaintext(), None),
        TlsPath::Rustls | TlsPath::Ktls => {
            let (identity, ca_hint) = server_identity(&args)?;
            let client_ca = args.client_ca.as_deref().map(read_ca_file).transpose()?;
            let config = ServerTls {
                identity,
                client_ca,
            }
            .config(path, &ktls)?;
            let options = KtlsOptions::from_probe(&ktls).with_rekey_after(args.ktls_rekey_after);
            (
                Acceptor::tls(config, path == TlsPath::Ktls, args.handshake_timeout)
                    .with_ktls_options(options),
                ca_hint,
            )
        }
    };

    raise_fd_limit(args.limits.max_connections);
    let listeners_wanted = match args.runtime {
        RuntimeMode::ThreadPerCore => cores,
        RuntimeMode::WorkStealing => 1,
    };
    let listeners = krpc_server::bind(args.listen, listeners_wanted)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listeners[0].local_addr()?;
    let metrics_listener = std::net::TcpListener::bind(args.metrics_listen).with_context(|| {
        format!(
            "cannot listen on {} (--metrics-listen)",
            args.metrics_listen
        )
    })?;
    let metrics_addr = metrics_listener.local_addr()?;
    let server = Server::new(
        ServerInfo {
            strategy: args.strategy,
            handoff: args.handoff,
            defer_max: args.defer_max as usize,
            pool_cap_bytes: args.pool_cap_bytes,
            max_message_bytes: args.max_message_bytes,
            limits: args.limits.clone(),
            ..ServerInfo::new(args.runtime, cores, args.tls, ktls)
        },
        acceptor,
    );
    info!(
        addr = %local,
        tls = %path,
        runtime = %args.runtime,
        cores,
        strategy = %args.strategy,
        handoff = %args.handoff,
        metrics = %format!("http://{metrics_addr}/metrics"),
        "krpc-server listening"
    );
    info!(
        "call it with: {}",
        call_hint(local, path, ca_hint.as_deref())
    );

    let shutdown = CancellationToken::new();
    let signals = thread::Builder::new()
        .name("krpc-signals".into())
        .spawn({
            let shutdown = shutdown.clone();
            move || wait_for_signal(shutdown)
        })
        .context("cannot start the signal thread")?;
    let metrics_thread = thread::Builder::new()
        .name("krpc-metrics".into())
        .spawn({
            let (server, shutdown) = (server.clone(), shutdown.clone());
            move || server.serve_metrics(metrics_listener, shutdown)
        })
        .context("cannot start the metrics thread")?;
    let served = server.serve(listeners, shutdown.clone());
    shutdown.cancel();
    let _ = signals.join();
    if let Ok(Err(error)) = metrics_thread.join() {
        warn!(%error, "metrics endpoint failed");
    }
    served?;
    let totals = server.totals();
    info!(
        connections = totals.connections,
        rpcs_started = totals.rpcs_started,
        rpcs_answered = totals.rpcs_answered,
        rpcs_cut_off = totals.rpcs_cut_off,
        "krpc-server stopped"
    );
    Ok(())
}

/// Raises the soft open-file limit to the hard one (as Go programs do at start): every
/// connection is a descriptor. Warns when `--max-connections` cannot be reached; running out is
/// handled anyway (the accept loop sheds and backs off), but refusing at the cap is clearer.
fn raise_fd_limit(max_connections: u32) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Listeners, the metrics endpoint, the runtime's own descriptors: a few dozen.
    let wanted = u64::from(max_connections) + 64;
    if soft < wanted {
        warn!(
            open_file_limit = soft,
            max_connections,
            "the open-file limit is below --max-connections + 64: connections past it are shed at accept (EMFILE)"
        );
    }
}

/// The certificate to serve: `--cert/--key`, or development certificates (generated on first
/// use). Also returns the CA file a client needs, for the start-up hint.
fn server_identity(args: &ServeArgs) -> anyhow::Result<(Identity, Option<PathBuf>)> {
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        return Ok((Identity::from_pem_files(cert, key)?, None));
    }
    let dir = args
        .dev_certs
        .clone()
        .or_else(DevCertPaths::default_dir)
        .context("no --cert/--key given and no home directory for development certificates (set --dev-certs)")?;
    let paths = DevCertPaths::in_dir(&dir);
    if !paths.all_exist() {
        DevCerts::generate(&[])?.write(&dir)?;
        info!(dir = %dir.display(), "generated development certificates");
    }
    let identity = Identity::from_pem_files(&paths.server_cert, &paths.server_key)?;
    Ok((identity, Some(paths.ca_cert)))
}

fn call_hint(addr: SocketAddr, path: TlsPath, ca: Option<&Path>) -> String {
    let mut hint = format!("krpc --addr {addr}");
    match (path, ca) {
        (TlsPath::Off, _) => hint.push_str(" --tls off"),
        (_, Some(ca)) => hint.push_str(&format!(" --ca {}", ca.display())),
        (_, None) => hint.push_str(" --ca <CA of your certificate>"),
    }
    hint.push_str(" echo hello");
    hint
}

/// Blocks until SIGTERM or Ctrl-C (then cancels `shutdown`), or until `shutdown` is cancelled
/// elsewhere (the server stopped on its own).
fn wait_for_signal(shutdown: CancellationToken) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            warn!(%error, "cannot watch for signals; stop the server with SIGKILL");
            return;
        }
    };
    runtime.block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    warn!(%error, "cannot watch for SIGTERM");
                    shutdown.cancelled().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining in-flight RPCs"),
            _ = tokio::signal::ctrl_c() => info!("Ctrl-C: draining in-flight RPCs"),
            () = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
}
