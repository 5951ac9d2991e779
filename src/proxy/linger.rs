//! Closing a client connection without destroying the response just sent: closing a socket with unread input
//! makes the kernel send a reset, which can discard the response before the client reads it.

use std::time::{Duration, Instant};

use crate::net::BufferedStream;

/// How long, and how much, a refused client may keep sending before its connection is cut.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// How often a lingering socket whose reads timed out is drained.
const LINGER_POLL: Duration = Duration::from_millis(50);

/// Closes after an error response without destroying it: closing a socket with unread input makes the kernel send
/// a reset, which can discard the response before the client reads it. So stop writing, read and drop what the
/// client still sends (bounded in time and bytes), then close.
pub async fn linger_close(mut client: BufferedStream) {
    if client.reads_ended() {
        return linger_after_read_timeout(client).await;
    }
    if client.shutdown_write().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return;
        }
        let available = client.buffered().len();
        client.consume(available);
        drained += available;
        match client.fill(remaining).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// [`linger_close`] for a connection whose read timed out. Its read side is shut, so reads return at once, and once
/// corelb sends its FIN the kernel answers any further data with a reset (RFC 1122). So no FIN yet: drop what arrives
/// every `LINGER_POLL` until the client closes (the reply said `Connection: close`), or the linger time or bytes run
/// out.
async fn linger_after_read_timeout(mut client: BufferedStream) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES && Instant::now() < deadline {
        drained += client.discard_received();
        if client.peer_finished_sending() {
            client.discard_received();
            return;
        }
        monoio::time::sleep(LINGER_POLL).await;
    }
}
