//! Test harness: starts the real `corelb` and `corelb-backend` binaries on 127.0.0.1 with ephemeral ports, waits
//! for their ready lines, and kills them when dropped (and, through PR_SET_PDEATHSIG, when the test thread dies).
//! Also a small blocking HTTP/1.1 client that sends raw bytes, so tests control every byte on the wire.

#![allow(dead_code)]
// A harness stops a test on any surprise: unwrapping is how it fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CORELB: &str = env!("CARGO_BIN_EXE_corelb");
pub const BACKEND: &str = env!("CARGO_BIN_EXE_corelb-backend");
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The I/O driver the suite runs corelb on: `CORELB_TEST_IO_DRIVER=epoll` runs everything on the fallback.
pub fn io_driver() -> String {
    std::env::var("CORELB_TEST_IO_DRIVER").unwrap_or_else(|_| "auto".to_string())
}

/// A child process whose stderr is collected line by line.
pub struct Process {
    child: Child,
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = Arc::clone(&lines);
            let label = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("CORELB_TEST_VERBOSE").is_some() {
                        eprintln!("[{label}] {line}");
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Process {
            child,
            name: name.to_string(),
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().into_iter().find(|line| line.contains(needle)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} before printing {needle:?}:\n{}",
                    self.name,
                    self.output().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} in time:\n{}",
                self.name,
                self.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a line containing `needle` (for use through a shared reference).
    pub fn clone_output_wait(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.output().into_iter().find(|line| line.contains(needle)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?}:\n{}",
                self.name,
                self.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit in time", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM")
    }

    /// Resident memory now (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS")
    }

    /// Threads the process runs now.
    pub fn threads(&self) -> u64 {
        self.status_field("Threads")
    }

    /// A numeric field of /proc/PID/status (units such as `kB` dropped).
    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_addr_after(line: &str, marker: &str) -> SocketAddr {
    let start = line.find(marker).unwrap_or_else(|| panic!("no {marker:?} in {line:?}")) + marker.len();
    let text: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != '"')
        .collect();
    text.parse()
        .unwrap_or_else(|_| panic!("bad address {text:?} in {line:?}"))
}

/// A running example backend.
pub struct Backend {
    pub process: Process,
    pub addr: SocketAddr,
    pub id: String,
}

impl Backend {
    pub fn start(id: &str) -> Backend {
        Backend::start_with(id, &[])
    }

    pub fn start_with(id: &str, extra: &[&str]) -> Backend {
        let mut command = Command::new(BACKEND);
        if !extra.contains(&"--port") {
            command.args(["--port", "0"]);
        }
        command.args(["--id", id, "--quiet"]).args(extra);
        let mut process = Process::spawn(&format!("backend-{id}"), &mut command);
        let line = process.wait_for_line("listening on ", READY_TIMEOUT);
        let addr = parse_addr_after(&line, "listening on ");
        Backend {
            process,
            addr,
            id: id.to_string(),
        }
    }

    /// A backend listening on `reserved`'s port (its listener shares the port, SO_REUSEPORT).
    pub fn start_on(id: &str, reserved: &DeadBackend) -> Backend {
        Backend::start_with(id, &["--port", &reserved.addr.port().to_string()])
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its id in corelb's config when none is given: `host:port`.
    pub fn id(&self) -> String {
        self.addr.to_string()
    }

    /// (connections accepted, requests served) as reported by `/stats`, asked directly. Connections count the
    /// earlier `/stats` connections; requests do not count `/stats`, `/health` or `/control/` requests.
    pub fn stats(&self) -> (u64, u64) {
        let [connections, requests, _] = self.stats_with_held();
        (connections, requests)
    }

    /// Requests the backend holds on `/hold` right now.
    pub fn held(&self) -> u64 {
        self.stats_with_held()[2]
    }

    /// Answers every request held on `/hold`.
    pub fn release(&self) {
        assert_eq!(Client::connect(self.addr).get("/control/release").status, 200);
    }

    /// (connections open now, most open at once), counting only connections that carried a request other than
    /// `/stats`, `/health` and `/control/`: what corelb holds open to this backend.
    pub fn open_connections(&self) -> (u64, u64) {
        let body = Client::connect(self.addr).get("/stats").text();
        let number = |key: &str| json_number(&body, key);
        (number("\"open\":"), number("\"peak_open\":"))
    }

    fn stats_with_held(&self) -> [u64; 3] {
        let response = Client::connect(self.addr).get("/stats");
        let body = response.text();
        let number = |key: &str| json_number(&body, key);
        // The /stats request itself is one connection, counted before it is answered; the backend does not count
        // /stats, /health and /control/ requests among the requests it served.
        [
            number("\"connections\":") - 1,
            number("\"requests\":"),
            number("\"held\":"),
        ]
    }
}

/// A backend address that refuses every connection, reliably: the port is bound but never listens, so the kernel
/// answers connects with a reset and no other process can take the port while the test runs. (Killing a backend
/// instead frees its port, which a parallel test may then be given.) The socket is bound with SO_REUSEPORT, so a
/// real backend can listen on the same port ([`Backend::start_on`]) and be killed and revived there while the
/// port stays reserved: connections go to the listener when there is one, and are refused when there is none.
pub struct DeadBackend {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl DeadBackend {
    pub fn new() -> DeadBackend {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        DeadBackend { _socket: socket, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "corelb-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `ctl backends` until `condition` holds of backend `id` (10 s at most); returns its entry.
pub fn backend_when(
    corelb: &Corelb,
    id: &str,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = corelb.control(serde_json::json!({"cmd": "backends"}));
        assert_eq!(reply["ok"], true, "{reply}");
        let backends = reply["result"]["backends"].as_array().unwrap();
        let entry = backends.iter().find(|entry| entry["id"] == id).unwrap().clone();
        if condition(&entry) {
            return entry;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {entry}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A config for tests: one frontend on an ephemeral loopback port, the given backends, and `extra` TOML appended.
/// `extra` may hold `[server]` keys only through `server_extra`.
pub fn config_for(backends: &[(&Backend, u32)], workers: usize, server_extra: &str, extra: &str) -> String {
    let urls: Vec<(String, u32)> = backends
        .iter()
        .map(|(backend, weight)| (backend.url(), *weight))
        .collect();
    config_from_urls(&urls, workers, server_extra, extra)
}

/// [`config_for`] with backends given as URLs (for mixing live and [`DeadBackend`]s).
pub fn config_from_urls(backends: &[(String, u32)], workers: usize, server_extra: &str, extra: &str) -> String {
    let mut text = format!(
        "[server]\nworkers = {workers}\npin_workers = false\nshutdown_grace = \"5s\"\nexpose_worker_header = true\n{server_extra}\n\
         [metrics]\nport = 0\n\n[[frontends]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = 0\n\n"
    );
    for (url, weight) in backends {
        text.push_str(&format!("[[backends]]\nurl = \"{url}\"\nweight = {weight}\n\n"));
    }
    text.push_str(extra);
    text
}

/// A running corelb.
pub struct Corelb {
    pub process: Process,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl Corelb {
    pub fn start(config: &str) -> Corelb {
        Corelb::start_with(config, |_| {})
    }

    /// Starts corelb with `env` added to its environment.
    pub fn start_with_env(config: &str, env: &[(&str, &std::ffi::OsStr)]) -> Corelb {
        Corelb::start_with(config, |command| {
            for (name, value) in env {
                command.env(name, value);
            }
        })
    }

    /// Starts corelb with its soft and hard `RLIMIT_NOFILE` set to `limit`.
    pub fn start_with_nofile(config: &str, limit: u64) -> Corelb {
        Corelb::start_with(config, |command| {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the child between fork and exec and calls only setrlimit, which is
            // async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let limits = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limits) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    fn start_with(config: &str, prepare: impl FnOnce(&mut Command)) -> Corelb {
        let dir = TempDir::new();
        let path = dir.write("corelb.toml", config);
        let mut command = Command::new(CORELB);
        command
            .args(["run", "-c"])
            .arg(&path)
            .args(["--io-driver", &io_driver()]);
        prepare(&mut command);
        let mut process = Process::spawn("corelb", &mut command);
        let line = process.wait_for_line("corelb ready", READY_TIMEOUT);
        let addr = parse_addr_after(&line, "web=");
        Corelb { process, addr, dir }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The address of the frontend named `name`, from the ready line.
    pub fn frontend_addr(&self, name: &str) -> SocketAddr {
        let line = self
            .process
            .output()
            .into_iter()
            .find(|line| line.contains("corelb ready"))
            .expect("a ready line");
        parse_addr_after(&line, &format!("{name}="))
    }

    /// Sends one keep-alive GET on each of `count` new connections; does not read the answers.
    pub fn clients_with_a_request(&self, count: usize) -> Vec<Client> {
        (0..count)
            .map(|_| {
                let mut client = self.client();
                client.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
                client
            })
            .collect()
    }

    /// The control socket path (the harness configs use the default, next to the config file).
    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("corelb.sock")
    }

    /// Runs `corelb ctl --socket ... ARGS`; returns (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(CORELB)
            .arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run corelb ctl");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Sends raw lines on one control socket connection and returns one parsed reply per line.
    pub fn control_lines(&self, lines: &[&[u8]]) -> Vec<serde_json::Value> {
        use std::os::unix::net::UnixStream;
        let mut stream = UnixStream::connect(self.socket()).expect("connect control socket");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        lines
            .iter()
            .map(|line| {
                stream.write_all(line).unwrap();
                stream.write_all(b"\n").unwrap();
                let mut reply = String::new();
                reader.read_line(&mut reply).expect("reply line");
                serde_json::from_str(&reply).unwrap_or_else(|error| panic!("bad reply {reply:?}: {error}"))
            })
            .collect()
    }

    /// One control command as JSON; returns the reply.
    pub fn control(&self, request: serde_json::Value) -> serde_json::Value {
        self.control_lines(&[request.to_string().as_bytes()]).remove(0)
    }

    pub fn get(&self, path: &str) -> Response {
        self.client().get(path)
    }

    /// The metrics listener's address, from its log line.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.logged_addr("metrics listening")
    }

    /// The admin API's address, from its log line.
    pub fn admin_addr(&self) -> SocketAddr {
        self.logged_addr("admin API listening")
    }

    fn logged_addr(&self, message: &str) -> SocketAddr {
        let line = self
            .process
            .output()
            .into_iter()
            .find(|line| line.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} line"));
        let start = line.find("address=").unwrap() + "address=".len();
        line[start..].split_whitespace().next().unwrap().parse().unwrap()
    }

    /// `GET /metrics`, checked to be Prometheus text.
    pub fn scrape(&self) -> String {
        let response = Client::connect(self.metrics_addr()).get("/metrics");
        assert_eq!(response.status, 200);
        assert!(response
            .header("Content-Type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        response.text()
    }
}

/// Sums every sample of `family` (exact name, any labels) whose label text contains `filter`.
pub fn metric_sum(text: &str, family: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(&format!("{family}{{")) || line.starts_with(&format!("{family} ")))
        .filter(|line| line.contains(filter))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body came chunked.
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn backend_id(&self) -> String {
        self.header("X-Backend-Id")
            .unwrap_or_else(|| panic!("no X-Backend-Id in {self:?}"))
            .to_string()
    }
}

/// A blocking HTTP/1.1 client over one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|error| panic!("connect {addr}: {error}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from a chosen loopback address (127.0.0.2, ...), to look like another client.
    pub fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(local, 0).into()).unwrap();
        socket
            .connect(&addr.into())
            .unwrap_or_else(|error| panic!("connect {addr} from {local}: {error}"));
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send request");
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes());
        self.read_response()
    }

    /// `GET path` carrying `X-Id: id`, for backends that echo it.
    pub fn get_with_id(&mut self, path: &str, id: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nX-Id: {id}\r\n\r\n").as_bytes());
        self.read_response()
    }

    /// Reads one CRLF-terminated line (without its CRLF), waiting for it to arrive.
    fn read_line(&mut self, what: &str) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|window| window == b"\r\n") {
                let line = String::from_utf8(self.buf[..end].to_vec()).expect("utf-8 line");
                self.buf.drain(..end + 2);
                return line;
            }
            assert!(self.fill() > 0, "connection closed before {what}");
        }
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 64 * 1024];
        let read = self.stream.read(&mut chunk).expect("read response");
        self.buf.extend_from_slice(&chunk[..read]);
        read
    }

    /// Reads whether the peer closed the connection (EOF) within `timeout`.
    pub fn is_closed_by_peer(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut byte = [0u8; 1];
        let closed = match self.stream.read(&mut byte) {
            Ok(0) => true,
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        closed
    }

    /// Whether anything has arrived (or the peer closed), without waiting.
    pub fn has_input(&self) -> bool {
        self.stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let arrived =
            !matches!(self.stream.peek(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).unwrap();
        arrived || !self.buf.is_empty()
    }

    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// Reads one response; `head_request` means the response has no body whatever its headers say.
    pub fn read_response_to(&mut self, head_request: bool) -> Response {
        let mut discard = |_: &[u8]| {};
        let (response, _) = self.read_response_streaming(head_request, &mut discard, true);
        response
    }

    /// Reads one response, handing the body to `sink` as it arrives; keeps it in memory only when `keep` is set.
    /// Returns the response and the body length.
    pub fn read_response_streaming(
        &mut self,
        head_request: bool,
        sink: &mut dyn FnMut(&[u8]),
        keep: bool,
    ) -> (Response, u64) {
        let head_end = loop {
            if let Some(position) = self.buf.windows(4).position(|window| window == b"\r\n\r\n") {
                break position + 4;
            }
            assert!(
                self.fill() > 0,
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("utf-8 head");
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let version = if status_line.starts_with("HTTP/1.0") { 0 } else { 1 };
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').expect("header colon");
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        let mut response = Response {
            status,
            version,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        let mut length = 0u64;
        let mut deliver = |data: &[u8], body: &mut Vec<u8>| {
            length += data.len() as u64;
            sink(data);
            if keep {
                body.extend_from_slice(data);
            }
        };
        let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
        let chunked = response
            .header("Transfer-Encoding")
            .is_some_and(|value| value.eq_ignore_ascii_case("chunked"));
        let content_length = response
            .header("Content-Length")
            .map(|value| value.parse::<u64>().expect("numeric Content-Length"));
        let mut body = Vec::new();
        if no_body {
        } else if chunked {
            response.chunked = true;
            // Framed here, by hand, rather than with corelb's decoder: the test must not share the parser it tests.
            loop {
                let size_line = self.read_line("a chunk size");
                let digits = size_line.split(';').next().unwrap().trim();
                let size =
                    u64::from_str_radix(digits, 16).unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    while !self.read_line("a trailer").is_empty() {}
                    break;
                }
                let mut remaining = size;
                while remaining > 0 {
                    if self.buf.is_empty() {
                        assert!(self.fill() > 0, "connection closed inside a chunk");
                    }
                    let take = (self.buf.len() as u64).min(remaining) as usize;
                    deliver(&self.buf[..take], &mut body);
                    self.buf.drain(..take);
                    remaining -= take as u64;
                }
                assert!(
                    self.read_line("the end of a chunk").is_empty(),
                    "chunk data not followed by CRLF"
                );
            }
        } else if let Some(content_length) = content_length {
            let mut remaining = content_length;
            while remaining > 0 {
                if self.buf.is_empty() {
                    assert!(self.fill() > 0, "connection closed with {remaining} body bytes missing");
                }
                let take = (self.buf.len() as u64).min(remaining) as usize;
                deliver(&self.buf[..take], &mut body);
                self.buf.drain(..take);
                remaining -= take as u64;
            }
        } else {
            loop {
                if !self.buf.is_empty() {
                    let data = std::mem::take(&mut self.buf);
                    deliver(&data, &mut body);
                }
                if self.fill() == 0 {
                    break;
                }
            }
        }
        response.body = body;
        (response, length)
    }
}

/// The byte at `index` of the example backend's generated bodies.
pub fn pattern_byte(index: u64) -> u8 {
    b'a' + ((index % (64 * 1024)) % 26) as u8
}

/// The number after `key` (e.g. `"open":`) in a JSON body of the example backend (`/stats`, an echo).
pub fn json_number(body: &str, key: &str) -> u64 {
    let start = body.find(key).unwrap_or_else(|| panic!("{key} in {body}")) + key.len();
    body[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}
