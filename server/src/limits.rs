//! Every limit the server puts on its peers, with its flag and its default. The HTTP/2 ones are
//! set on each connection's hyper builder ([`crate::conn`]); none is left to a library default
//! (tonic 0.14 passes `None` for max concurrent streams and local-error resets, which *removes*
//! hyper/h2's protection). The timeouts follow grpc-go's `keepalive.ServerParameters`, which is
//! what gRPC users know: `MaxConnectionIdle`, `MaxConnectionAge`, `MaxConnectionAgeGrace`,
//! `Time`, `Timeout`.

use std::{fmt, str::FromStr, time::Duration};

use clap::Args;

/// A duration that can also be `none` (never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaybeDuration(pub Option<Duration>);

impl MaybeDuration {
    pub const NONE: Self = Self(None);

    pub fn get(self) -> Option<Duration> {
        self.0
    }
}

impl FromStr for MaybeDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Self(None));
        }
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration or `none` ({e})"))?;
        if d.is_zero() {
            return Err("must be above 0 (`none` switches it off)".to_owned());
        }
        Ok(Self(Some(d)))
    }
}

impl fmt::Display for MaybeDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("none"),
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
        }
    }
}

/// The server's limits on connections, HTTP/2, memory and shutdown. `Default` is the flags'
/// defaults (a test holds the two in step).
#[derive(Clone, Debug, PartialEq, Eq, Args)]
pub struct Limits {
    /// Connections open at once, handshakes included (all cores together). Past it, a new
    /// connection is closed at once (RST) and counted in krpc_connections_refused_total.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_connections: u32,
    /// TLS handshakes in progress at once (all cores together). Past it, a new connection is
    /// closed at once (RST) and counted in krpc_connections_refused_total.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_handshakes: u32,
    /// HTTP/2 streams a client may have open at once on one connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused with REFUSED_STREAM. 200 is what
    /// hyper itself would use.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_concurrent_streams: u32,
    /// Streams the server may reset because of a client's errors on one connection before it
    /// closes it with GOAWAY(ENHANCE_YOUR_CALM) (h2's default; RUSTSEC-2024-0003).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_local_error_resets: u32,
    /// Streams a client may open and reset before the server has seen them, on one connection,
    /// before it closes it with GOAWAY(ENHANCE_YOUR_CALM) (h2's default; rapid reset,
    /// CVE-2023-44487).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    pub max_pending_accept_resets: u32,
    /// Largest request header list (SETTINGS_MAX_HEADER_LIST_SIZE, e.g. 16KiB); a larger one
    /// is refused (HTTP 431) and a CONTINUATION flood past it closes the connection.
    #[arg(long, default_value = "16KiB", value_parser = parse_size_u32, help_heading = "Limits")]
    pub max_header_list_bytes: u32,
    /// HTTP/2 flow-control window of one stream: request bytes a client may send ahead of the
    /// server reading them.
    #[arg(long, default_value = "1MiB", value_parser = parse_window, help_heading = "Limits")]
    pub stream_window_bytes: u32,
    /// HTTP/2 flow-control window of a connection (all its streams together).
    #[arg(long, default_value = "1MiB", value_parser = parse_window, help_heading = "Limits")]
    pub connection_window_bytes: u32,
    /// After the handshake, a client must send the HTTP/2 preface and its first SETTINGS frame
    /// within this time, or the connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration, help_heading = "Limits")]
    pub preface_timeout: Duration,
    /// A connection with no RPC in flight for this long is sent GOAWAY and closed (grpc-go
    /// MaxConnectionIdle), or `none`.
    #[arg(long, default_value = "5m", help_heading = "Limits")]
    pub idle_timeout: MaybeDuration,
    /// Interval of the server's HTTP/2 PINGs that find dead peers (grpc-go Time), or `none`.
    #[arg(long, default_value = "1m", help_heading = "Limits")]
    pub keepalive_interval: MaybeDuration,
    /// A PING not answered in this time closes the connection (grpc-go Timeout).
    #[arg(long, default_value = "20s", value_parser = parse_positive_duration, help_heading = "Limits")]
    pub keepalive_timeout: Duration,
    /// A connection older than this is sent GOAWAY, so clients reconnect and spread out again
    /// (grpc-go MaxConnectionAge), or `none`.
    #[arg(long, default_value = "none", help_heading = "Limits")]
    pub max_connection_age: MaybeDuration,
    /// A connection sent GOAWAY (for its age or idleness) that is still open this much later is
    /// closed, its RPCs cut off (grpc-go MaxConnectionAgeGrace).
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration, help_heading = "Limits")]
    pub max_connection_age_grace: Duration,
    /// Bytes the Put store may hold (keys + values + 64 bytes per entry); a Put past it gets
    /// RESOURCE_EXHAUSTED. With --handoff owner each owner core holds an equal share.
    #[arg(long, default_value = "64MiB", value_parser = parse_size, help_heading = "Limits")]
    pub store_max_bytes: usize,
    /// Request bytes queued for one owner core (--handoff owner) before handlers wait for room.
    #[arg(long, default_value = "16MiB", value_parser = parse_nonzero_size, help_heading = "Limits")]
    pub owner_queue_bytes: usize,
    /// On SIGTERM, time to finish the RPCs in flight; after it, the remaining streams are
    /// reset, their connections closed, and the server exits.
    #[arg(long, default_value = "20s", value_parser = parse_positive_duration, help_heading = "Limits")]
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_handshakes: 256,
            max_concurrent_streams: 200,
            max_local_error_resets: 1024,
            max_pending_accept_resets: 20,
            max_header_list_bytes: 16 << 10,
            stream_window_bytes: 1 << 20,
            connection_window_bytes: 1 << 20,
            preface_timeout: Duration::from_secs(10),
            idle_timeout: MaybeDuration(Some(Duration::from_secs(300))),
            keepalive_interval: MaybeDuration(Some(Duration::from_secs(60))),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: MaybeDuration::NONE,
            max_connection_age_grace: Duration::from_secs(30),
            store_max_bytes: 64 << 20,
            owner_queue_bytes: 16 << 20,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// A byte size: `65536`, `64KiB`, `4MiB`, `1GiB` (also `kB`, `MB`: powers of ten).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 65536, 64KiB, 4MiB)"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s:?} is too large"))
}

/// A byte size of at least one byte.
pub fn parse_nonzero_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err("must be at least 1 byte".to_owned()),
        n => Ok(n),
    }
}

fn parse_size_u32(s: &str) -> Result<u32, String> {
    let n = parse_nonzero_size(s)?;
    u32::try_from(n).map_err(|_| format!("{s:?} is too large (at most 4GiB - 1)"))
}

/// HTTP/2 windows: 65,535 (the protocol's initial window) to 2^31 - 1 bytes (RFC 9113 6.9.1).
fn parse_window(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !(65_535..=(1 << 31) - 1).contains(&n) {
        return Err(format!("{s:?} is outside 65535..=2147483647 bytes"));
    }
    Ok(n as u32)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration ({e})"))?;
    if d.is_zero() {
        return Err("must be above 0".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn defaults_match_the_flags() {
        let cli = Cli::try_parse_from(["krpc-server"]).unwrap();
        assert_eq!(cli.limits, Limits::default());
    }

    #[test]
    fn durations_sizes_and_none() {
        let cli = Cli::try_parse_from([
            "x",
            "--idle-timeout",
            "none",
            "--max-connection-age",
            "90s",
            "--max-header-list-bytes",
            "8KiB",
            "--store-max-bytes",
            "0",
        ])
        .unwrap();
        assert_eq!(cli.limits.idle_timeout.get(), None);
        assert_eq!(
            cli.limits.max_connection_age.get(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(cli.limits.max_header_list_bytes, 8192);
        assert_eq!(cli.limits.store_max_bytes, 0);
        assert_eq!(cli.limits.idle_timeout.to_string(), "none");
        assert_eq!(cli.limits.max_connection_age.to_string(), "1m 30s");
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            ["x", "--idle-timeout", "0s"],
            ["x", "--idle-timeout", "soon"],
            ["x", "--max-concurrent-streams", "0"],
            ["x", "--stream-window-bytes", "1KiB"],
            ["x", "--shutdown-grace", "0s"],
            ["x", "--owner-queue-bytes", "0"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }
}
