//! A running `clickstream collect`, and a bare HTTP/1.1 client over `TcpStream` (bare so
//! a test can also send what no well-behaved client would: trickled headers and bodies,
//! lying lengths).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{clickstream, unique, Services};

/// A running collector.
pub struct Collector {
    pub child: std::process::Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub log: PathBuf,
}

/// The write key the tests' collectors accept (site `test`).
pub const KEY: &str = "test-key-0123456789";

impl Collector {
    /// Starts a collector producing to `topic` / `dlq` with [`KEY`] and `extra` flags.
    pub fn start(s: &Services, topic: &str, dlq: &str, extra: &[&str]) -> Collector {
        Collector::start_with_env(s, topic, dlq, extra, &[])
    }

    /// [`Collector::start`] with extra environment variables (Kafka security settings).
    pub fn start_with_env(
        s: &Services,
        topic: &str,
        dlq: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Collector {
        let log = std::env::temp_dir().join(format!("{}.log", unique("collect")));
        let child = clickstream()
            .envs(env.iter().copied())
            .args([
                "collect",
                "--listen",
                "127.0.0.1:0",
                "--bootstrap",
                &s.bootstrap,
            ])
            .args(["--topic", topic, "--dlq-topic", dlq])
            .args(["--write-key", &format!("test={KEY}")])
            .env_remove("CLICKSTREAM_WRITE_KEYS")
            .env_remove("CLICKSTREAM_ALLOWED_ORIGINS")
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start clickstream collect");
        let mut c = Collector {
            child,
            addr: String::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&c.log).unwrap_or_default();
            if let Some(url) = text.lines().find_map(|l| l.split("url=http://").nth(1)) {
                c.addr = url.split(['/', ' ']).next().unwrap().to_string();
                return c;
            }
            assert!(
                c.child.try_wait().unwrap().is_none(),
                "collect exited early: {text}"
            );
            assert!(Instant::now() < deadline, "collect did not start: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(&self.addr, method, path, headers, body)
    }

    /// POST a JSON body to `/v1/events` with the test key.
    pub fn post(&self, body: &[u8]) -> Resp {
        self.request(
            "POST",
            &format!("/v1/events?k={KEY}"),
            &[("Content-Type", "application/json")],
            body,
        )
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to the collector");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before reading a body it refuses.
    let _ = s.write_all(body);
    read_response(&mut s)
}

/// Reads a response until the server closes the connection.
pub fn read_response(s: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw).unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)))
}

fn parse(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}
