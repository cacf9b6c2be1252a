//! Whether a network card can do the TLS record crypto itself (kTLS `TLS_HW`): the netdev
//! features `tls-hw-tx-offload` and `tls-hw-rx-offload`, as `ethtool -k` shows them, read with
//! the same `SIOCETHTOOL` ioctls (string set of feature names, then the feature words).

#![allow(unsafe_code)] // three ioctls on plain C structs; each call has its SAFETY note

use std::{ffi::CStr, io, mem, os::fd::AsRawFd};

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// One interface's TLS offload features.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicTlsOffload {
    pub iface: String,
    /// The device can encrypt TLS records on transmit.
    pub tx_available: bool,
    /// ... and the feature is switched on.
    pub tx_active: bool,
    pub rx_available: bool,
    pub rx_active: bool,
}

/// TLS offload features of every interface except loopback. Interfaces the kernel will not
/// describe (no ethtool support, e.g. some virtual devices) are left out, not an error.
pub fn nic_tls_offload() -> Vec<NicTlsOffload> {
    let Ok(names) = nix::net::if_::if_nameindex() else {
        return Vec::new();
    };
    let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return Vec::new();
    };
    names
        .iter()
        .filter_map(|i| i.name().to_str().ok().map(str::to_owned))
        .filter(|name| name != "lo")
        .filter_map(|name| offload_of(&socket, &name).ok())
        .collect()
}

fn offload_of(socket: &std::net::UdpSocket, iface: &str) -> io::Result<NicTlsOffload> {
    let names = feature_names(socket, iface)?;
    let words = names.len().div_ceil(32);
    // struct ethtool_gfeatures { u32 cmd, size; struct { u32 available, requested, active,
    // never_changed } features[size]; }
    let mut buf = vec![0u32; 2 + 4 * words];
    buf[0] = ETHTOOL_GFEATURES;
    buf[1] = words as u32;
    ethtool(socket, iface, buf.as_mut_ptr().cast())?;
    let bit = |i: usize, field: usize| buf[2 + 4 * (i / 32) + field] & (1 << (i % 32)) != 0;
    let mut out = NicTlsOffload {
        iface: iface.to_owned(),
        ..Default::default()
    };
    for (i, name) in names.iter().enumerate() {
        match name.as_str() {
            "tls-hw-tx-offload" => (out.tx_available, out.tx_active) = (bit(i, 0), bit(i, 2)),
            "tls-hw-rx-offload" => (out.rx_available, out.rx_active) = (bit(i, 0), bit(i, 2)),
            _ => {}
        }
    }
    Ok(out)
}

/// The names of the feature bits, in bit order.
fn feature_names(socket: &std::net::UdpSocket, iface: &str) -> io::Result<Vec<String>> {
    // struct ethtool_sset_info { u32 cmd, reserved; u64 sset_mask; u32 data[]; }: one set asked.
    let mut info = [0u64; 3];
    info[0] = u64::from(ETHTOOL_GSSET_INFO);
    info[1] = 1 << ETH_SS_FEATURES;
    ethtool(socket, iface, info.as_mut_ptr().cast())?;
    if info[1] & (1 << ETH_SS_FEATURES) == 0 {
        return Err(io::Error::other("no feature string set"));
    }
    let count = (info[2] & 0xffff_ffff) as usize;
    // struct ethtool_gstrings { u32 cmd, string_set, len; u8 data[len * 32]; }
    let mut buf = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    buf[0] = ETHTOOL_GSTRINGS;
    buf[1] = ETH_SS_FEATURES;
    buf[2] = count as u32;
    ethtool(socket, iface, buf.as_mut_ptr().cast())?;
    let bytes: Vec<u8> = buf[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|chunk| {
            CStr::from_bytes_until_nul(chunk)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect())
}

/// `ioctl(SIOCETHTOOL)` on `iface` with the command buffer at `data`.
fn ethtool(socket: &std::net::UdpSocket, iface: &str, data: *mut libc::c_char) -> io::Result<()> {
    if iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other("interface name too long"));
    }
    // SAFETY: ifreq is a plain C struct (bytes and a union of plain fields); all zeroes is a
    // valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = data;
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name and the command at `data`, and writes
    // back at most the size that command declares: every caller sizes its buffer for the
    // counts it put in the command, and the buffer outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_are_described_without_error_and_loopback_is_skipped() {
        // Whatever this machine's NICs are, the call succeeds and never lists loopback.
        let all = nic_tls_offload();
        assert!(all.iter().all(|n| n.iface != "lo"), "{all:?}");
        for n in &all {
            // Active implies available.
            assert!(!n.tx_active || n.tx_available, "{n:?}");
            assert!(!n.rx_active || n.rx_available, "{n:?}");
        }
    }

    #[test]
    fn feature_names_include_the_tls_bits_on_a_real_interface() {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let Some(iface) = nix::net::if_::if_nameindex()
            .unwrap()
            .iter()
            .filter_map(|i| i.name().to_str().ok().map(str::to_owned))
            .find(|n| n != "lo" && feature_names(&socket, n).is_ok())
        else {
            eprintln!("SKIPPED: no interface here answers ethtool feature queries");
            return;
        };
        let names = feature_names(&socket, &iface).unwrap();
        // Every kernel since 4.19 names these bits, whether the device has them or not.
        assert!(
            names.iter().any(|n| n == "tls-hw-tx-offload"),
            "{iface}: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "rx-checksum"),
            "{iface}: {names:?}"
        );
    }
}
