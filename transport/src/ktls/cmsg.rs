//! Records with a type, through the kTLS control messages: `sendmsg` with `TLS_SET_RECORD_TYPE`
//! sends one record of the given content type (a KeyUpdate, an alert), and `recvmsg` reports
//! the content type of the record it returns with `TLS_GET_RECORD_TYPE` (Linux
//! Documentation/networking/tls.rst, "Send TLS control messages" and "Receiving TLS control
//! messages").
//!
//! This is the only unsafe code of the kTLS path: `msghdr`/`cmsghdr` are raw C structures that
//! point into our buffers, and `CMSG_*` walk them by pointer. The unsafe is split as quinn-udp's
//! `cmsg` module splits it: [`encode_record_type`] and [`decode_record_type`] state what the
//! header they are given must point to; [`send_record`] and [`recv_record`] build such headers
//! from borrowed buffers and are safe to call.

#![allow(unsafe_code)] // two syscalls and the CMSG_* walk over buffers we own; SAFETY notes below

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
};

/// A control-message buffer with the alignment `cmsghdr` needs, big enough for one
/// `SOL_TLS` message carrying one byte (`CMSG_SPACE(1)` is 24 on 64-bit Linux).
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

const CMSG_BUF_LEN: usize = 32;

// SAFETY: CMSG_SPACE is pure arithmetic on its argument.
const _: () = assert!(unsafe { libc::CMSG_SPACE(1) } as usize <= CMSG_BUF_LEN);
const _: () = assert!(mem::align_of::<libc::cmsghdr>() <= mem::align_of::<CmsgBuf>());

/// What one `recvmsg` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    /// Payload bytes written to the buffer; 0 with no record type is end of stream.
    pub(crate) len: usize,
    /// The record's TLS content type; `None` when the socket sent no `TLS_GET_RECORD_TYPE`
    /// (a socket without kTLS receive, or end of stream).
    pub(crate) record_type: Option<u8>,
    /// The kernel had more control data than fit (`MSG_CTRUNC`): the record type may be lost.
    pub(crate) control_truncated: bool,
}

/// Writes one `SOL_TLS`/`TLS_SET_RECORD_TYPE` control message holding `record_type` at the
/// start of `hdr`'s control buffer and sets `msg_controllen` to its space.
///
/// # Safety
/// `hdr.msg_control` must point to `hdr.msg_controllen` bytes that are valid for writes and
/// aligned for `cmsghdr`, with `hdr.msg_controllen >= CMSG_SPACE(1)`.
unsafe fn encode_record_type(hdr: &mut libc::msghdr, record_type: u8) {
    // SAFETY: the caller guarantees a control buffer of at least CMSG_SPACE(1) bytes, so
    // CMSG_FIRSTHDR returns a non-null pointer to an aligned cmsghdr inside it, and its data
    // byte (CMSG_DATA, at CMSG_LEN(0) from the header) is inside the buffer too.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        debug_assert!(!cmsg.is_null());
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        libc::CMSG_DATA(cmsg).write(record_type);
        hdr.msg_controllen = libc::CMSG_SPACE(1) as _;
    }
}

/// The content type in the first `SOL_TLS`/`TLS_GET_RECORD_TYPE` control message of `hdr`.
///
/// # Safety
/// `hdr.msg_control` and `hdr.msg_controllen` must describe a control buffer that `recvmsg`
/// has just filled (or that [`encode_record_type`] wrote), still alive and unmodified.
unsafe fn decode_record_type(hdr: &libc::msghdr) -> Option<u8> {
    // SAFETY: the caller guarantees that the control buffer holds well-formed cmsghdrs up to
    // msg_controllen; CMSG_FIRSTHDR and CMSG_NXTHDR return null past its end, and a header they
    // return lies inside it. The data byte is read only when cmsg_len says it is there.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_TLS
                && c.cmsg_type == libc::TLS_GET_RECORD_TYPE
                && c.cmsg_len as usize >= libc::CMSG_LEN(1) as usize
            {
                return Some(libc::CMSG_DATA(cmsg).read());
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Sends `payload` as one record of content type `record_type` (non-blocking as the socket is).
/// Returns the bytes taken, as `send` does.
pub(crate) fn send_record(
    fd: BorrowedFd<'_>,
    record_type: u8,
    payload: &[u8],
) -> io::Result<usize> {
    let mut control = CmsgBuf([0; CMSG_BUF_LEN]);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = CMSG_BUF_LEN as _;
    // SAFETY: msg_control points to `control`, CMSG_BUF_LEN writable bytes aligned for cmsghdr
    // (CmsgBuf's repr), which is at least CMSG_SPACE(1) (asserted above).
    unsafe { encode_record_type(&mut hdr, record_type) };
    // SAFETY: hdr points to an iovec over `payload` (read, never written, by sendmsg) and to
    // `control`; both outlive the call. fd is a valid descriptor for the borrow's lifetime.
    let sent = unsafe { libc::sendmsg(fd.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Receives into `buf` with room for the record-type control message.
pub(crate) fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut control = CmsgBuf([0; CMSG_BUF_LEN]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = CMSG_BUF_LEN as _;
    // SAFETY: hdr points to an iovec over `buf` (writable, buf.len() bytes) and to `control`
    // (CMSG_BUF_LEN writable bytes); both outlive the call. fd is valid for the borrow.
    let got = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut hdr, 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let record_type = if hdr.msg_controllen == 0 {
        None
    } else {
        // SAFETY: recvmsg just filled `control` (alive, aligned) and set msg_controllen to the
        // bytes it wrote; hdr still points to it.
        unsafe { decode_record_type(&hdr) }
    };
    Ok(Received {
        len: got as usize,
        record_type,
        control_truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        net::{TcpListener, TcpStream},
        os::fd::AsFd,
    };

    use super::*;

    /// What `encode_record_type` writes is what `decode_record_type` reads (for the GET type,
    /// as the kernel writes it).
    #[test]
    fn encode_then_decode() {
        for record_type in [20u8, 21, 22, 23, 0, 255] {
            let mut control = CmsgBuf([0xaa; CMSG_BUF_LEN]);
            // SAFETY: all-zero is a valid msghdr.
            let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
            hdr.msg_control = control.0.as_mut_ptr().cast();
            hdr.msg_controllen = CMSG_BUF_LEN as _;
            // SAFETY: control is CMSG_BUF_LEN aligned writable bytes.
            unsafe { encode_record_type(&mut hdr, record_type) };
            // SAFETY: as above; the header was written by encode_record_type.
            let cmsg = unsafe { &mut *libc::CMSG_FIRSTHDR(&hdr) };
            assert_eq!(cmsg.cmsg_type, libc::TLS_SET_RECORD_TYPE);
            cmsg.cmsg_type = libc::TLS_GET_RECORD_TYPE;
            // SAFETY: the buffer holds one well-formed cmsghdr up to msg_controllen.
            assert_eq!(unsafe { decode_record_type(&hdr) }, Some(record_type));
            cmsg.cmsg_level = libc::SOL_SOCKET;
            // SAFETY: as above.
            assert_eq!(unsafe { decode_record_type(&hdr) }, None);
        }
    }

    /// On a TCP socket without kTLS the kernel ignores SOL_TLS control messages: the payload
    /// goes through unchanged and nothing comes back with a record type.
    #[test]
    fn plain_tcp_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        assert_eq!(send_record(a.as_fd(), 22, b"key-update").unwrap(), 10);
        a.write_all(b"!").unwrap();
        drop(a);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            let r = recv_record(b.as_fd(), &mut buf).unwrap();
            assert_eq!(r.record_type, None);
            assert!(!r.control_truncated);
            if r.len == 0 {
                break;
            }
            got.extend_from_slice(&buf[..r.len]);
        }
        assert_eq!(got, b"key-update!");
    }
}
