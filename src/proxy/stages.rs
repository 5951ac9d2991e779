//! Stage tests: `serve_client` on a real worker context, its client side an in-memory transport
//! ([`Transport::pair`]) and its backend a plain `std` thread on loopback that frames HTTP by hand, so neither peer
//! shares corelb's parser. Each test checks that a branch of the request path stops where it must: by what the
//! worker's own state says (connections opened, pooled, requests a backend saw), not by timing.

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::rc::Rc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use monoio::net::UnixStream;

    use super::super::serve_client;
    use crate::config::parse_config;
    use crate::metrics::WorkerMetrics;
    use crate::net::transport::Transport;
    use crate::shard::{Generation, Outboxes, Place, Snapshot, WorkerContext, WorkerLimits};

    /// What the backend thread saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: AtomicUsize,
    }

    /// A backend on loopback answering every request head it reads with `answer`, without reading any body; it
    /// serves connections one after another until the test ends.
    fn backend(answer: &'static [u8]) -> (SocketAddr, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let counting = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counting.connections.fetch_add(1, Ordering::SeqCst);
                let mut pending = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Every whole head gets the answer; a body, if any, is left unread.
                    while let Some(end) = pending.windows(4).position(|window| window == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        counting.requests.fetch_add(1, Ordering::SeqCst);
                        if stream.write_all(answer).is_err() {
                            break;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => pending.extend_from_slice(&chunk[..read]),
                    }
                }
            }
        });
        (address, seen)
    }

    /// A worker context on `config` (a whole config file's text) with its one backend at `backend`.
    fn context(config: &str, backend: SocketAddr) -> Rc<WorkerContext> {
        let config = Arc::new(parse_config(config).unwrap());
        let snapshot = Snapshot {
            version: 1,
            config: Arc::clone(&config),
            backend_addrs: vec![backend],
            frontend_addrs: vec!["127.0.0.1:1".parse().unwrap()],
            sticky_cookies: Vec::new(),
            tls: Vec::new(),
            ticket_keys: None,
            upstream_tls: None,
        };
        let names: Vec<String> = config.frontends.iter().map(|frontend| frontend.name.clone()).collect();
        let mut metrics = WorkerMetrics::new(0, &names);
        let generation = Generation::build(&snapshot, None, Place { index: 0, workers: 1 }, &mut metrics);
        let (log, _) = crossbeam_channel::unbounded();
        let (news, _) = crossbeam_channel::unbounded();
        let (outcome_reports, _) = crossbeam_channel::unbounded();
        let outboxes = Outboxes {
            access_log: log,
            breaker_news: news,
            outcome_reports,
        };
        let limits = WorkerLimits {
            clients: 100,
            upstream: 100,
        };
        Rc::new(WorkerContext::new(0, generation, metrics, outboxes, 1, 1, limits))
    }

    fn config(backend: SocketAddr, extra: &str) -> String {
        format!(
            "[server]\nworkers = 1\n[metrics]\nenabled = false\n[[frontends]]\nname = \"web\"\nport = 0\n\
             [[backends]]\nurl = \"http://{backend}\"\n{extra}"
        )
    }

    /// Runs `test` with a client connected to `serve_client` on `context`, on a monoio runtime of its own.
    fn with_client<F, Fut>(context: Rc<WorkerContext>, test: F)
    where
        F: FnOnce(Rc<WorkerContext>, UnixStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        runtime.block_on(async move {
            monoio::spawn(Rc::clone(&context.watchdog).run());
            let (served, client) = Transport::pair().unwrap();
            let Transport::Local(client) = client else {
                unreachable!("a pair is local")
            };
            let slot = context.client_slots.take();
            let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            monoio::spawn(serve_client(Rc::clone(&context), served, peer, 0, slot));
            monoio::time::timeout(Duration::from_secs(30), test(context, client))
                .await
                .expect("the stage test ended in time");
        });
    }

    /// Sends `request` and reads one response: its status and the whole text up to its end (`content-length`
    /// bodies only, framed here by hand).
    async fn exchange(client: &mut UnixStream, request: &str) -> (u16, String) {
        let (result, _) = client.write_all(request.as_bytes().to_vec()).await;
        result.unwrap();
        let mut received = Vec::new();
        loop {
            if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map_or(0, |value| value.trim().parse().unwrap());
                if received.len() >= end + 4 + length {
                    let text = String::from_utf8_lossy(&received[..end + 4 + length]).into_owned();
                    let status = text[9..12].parse().unwrap();
                    return (status, text);
                }
            }
            let (result, buf) = client.read(vec![0u8; 4096]).await;
            let read = result.unwrap();
            assert!(read > 0, "the connection closed before a whole response: {received:?}");
            received.extend_from_slice(&buf[..read]);
        }
    }

    fn connections_opened(context: &WorkerContext) -> u64 {
        context
            .metrics_snapshot()
            .backends
            .iter()
            .map(|series| series.connections_new)
            .sum()
    }

    #[test]
    fn a_rate_limited_request_never_reaches_a_backend() {
        let (address, seen) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        // One token, refilled once in 1,000 s: the second request is limited whatever the machine's pace.
        let context = context(
            &config(address, "[ratelimit]\nenabled = true\nrate = 0.001\nburst = 1\n"),
            address,
        );
        with_client(context, |context, mut client| async move {
            let (first, _) = exchange(&mut client, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n").await;
            assert_eq!(first, 200);
            let (second, text) = exchange(&mut client, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n").await;
            assert_eq!(second, 429, "{text}");
            assert_eq!(
                seen.requests.load(Ordering::SeqCst),
                1,
                "only the admitted request was forwarded"
            );
            assert_eq!(connections_opened(&context), 1);
            let generation = context.generation();
            assert_eq!(generation.backends[0].in_flight(), 0);
        });
    }

    #[test]
    fn a_refused_head_never_opens_an_upstream_connection() {
        let (address, seen) = backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let context = context(&config(address, ""), address);
        with_client(context, |context, mut client| async move {
            // Two Content-Length fields that disagree: refused, never repaired (RFC 9112 §6.3).
            let (status, text) = exchange(
                &mut client,
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            )
            .await;
            assert_eq!(status, 400, "{text}");
            assert_eq!(connections_opened(&context), 0, "no upstream connection was opened");
            assert_eq!(context.upstream_slots.held(), 0);
            assert_eq!(seen.connections.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn an_early_response_never_returns_its_connection_to_the_pool() {
        // The backend refuses the upload at once, before its body, and keeps the connection open.
        let (address, _seen) = backend(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n");
        let context = context(&config(address, ""), address);
        with_client(context, |context, mut client| async move {
            // The head alone: the body is still to come when the backend answers.
            let (result, _) = client
                .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec())
                .await;
            result.unwrap();
            let (status, text) = exchange(&mut client, "").await;
            assert_eq!(status, 413, "{text}");
            let generation = context.generation();
            // The exchange has ended once the client's connection is closed (a lingering close): read to the end.
            loop {
                let (result, _) = client.read(vec![0u8; 4096]).await;
                if result.map_or(true, |read| read == 0) {
                    break;
                }
            }
            assert_eq!(
                generation.backends[0].idle_connections(),
                0,
                "a connection whose request body was cut short is not reused"
            );
            assert_eq!(connections_opened(&context), 1);
        });
    }
}
