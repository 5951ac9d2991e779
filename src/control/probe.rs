//! The rollout's health probe of new backends: one blocking `GET`, run on a helper thread (`jobs`), never on the
//! control loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A backend a rollout added, as its health probe needs it.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub id: String,
    pub address: SocketAddr,
    /// The `Host` header: the backend's authority.
    pub host: String,
    pub path: String,
    pub timeout: Duration,
}

/// `GET path` against a backend; healthy means a 2xx status, each of connect, send and read within `timeout`.
/// Blocking: runs on a helper thread (`jobs`), never on the control loop.
pub fn probe(target: &ProbeTarget) -> Result<(), String> {
    let ProbeTarget {
        address,
        host,
        path,
        timeout,
        ..
    } = target;
    let mut stream = TcpStream::connect_timeout(address, *timeout).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(*timeout))
        .map_err(|error| error.to_string())?;
    stream
        .set_write_timeout(Some(*timeout))
        .map_err(|error| error.to_string())?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: corelb-rollout\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|error| error.to_string())?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).map_err(|error| error.to_string())?;
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line.split(' ').nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("{path} answered {:?}", line.lines().next().unwrap_or("")))
    }
}
