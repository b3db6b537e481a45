//! Readiness for service managers and harnesses: the systemd notify
//! protocol. When `NOTIFY_SOCKET` is set (systemd sets it for a
//! `Type=notify` unit; a test harness may set it too), tcptrace sends one
//! `READY=1` datagram to it once the probe is attached and the session is
//! about to read events. A name starting with `@` is an abstract socket
//! (Linux), anything else a path. Without the variable, nothing happens.
use std::{
    ffi::OsStr,
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::{
            ffi::OsStrExt,
            net::{SocketAddr, UnixDatagram},
        },
    },
};

use crate::error::note;

/// Tells the service manager, if any, that tcptrace is tracing. A failure
/// to tell it is a warning, not an error: the trace itself goes on.
pub fn ready() {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(err) = send(&socket, b"READY=1") {
            note!(
                "tcptrace: warning: NOTIFY_SOCKET={}: {err}",
                socket.to_string_lossy()
            );
        }
    }
}

/// One datagram of `message` to the socket named `socket`.
fn send(socket: &OsStr, message: &[u8]) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract name (@...)",
            ))
        }
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(message, &addr)?;
    if sent != message.len() {
        return Err(io::Error::other("datagram sent in part"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_a_path_and_to_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("tcptrace-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("tcptrace-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), b"READY=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn refuses_a_relative_name() {
        assert!(send(OsStr::new("notify.sock"), b"READY=1").is_err());
    }
}
