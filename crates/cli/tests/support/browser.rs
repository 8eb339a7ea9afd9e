//! Headless Chromium driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: NUL-terminated JSON on fds 3 and 4), so the tests need
//! neither a WebDriver server nor a WebSocket client, only the Debian `chromium` package.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// A browser with one page.
pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Protocol events seen so far (console messages, exceptions, log entries).
    pub events: Vec<Value>,
    profile: std::path::PathBuf,
}

/// The browser binary: `$CHROMIUM`, else `chromium` on the PATH.
fn binary() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and opens a blank page.
    pub fn launch() -> Browser {
        Browser::launch_with(&[])
    }

    /// [`Browser::launch`] with extra command-line flags.
    pub fn launch_with(extra: &[&str]) -> Browser {
        let profile = std::env::temp_dir().join(super::unique("chromium-profile"));
        // The shell moves our stdin/stdout pipes to the fds the protocol uses, then execs.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); install it with `apt-get install chromium` or run ./dev/setup.sh",
                    binary()
                )
            });
        let to = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            profile,
        };
        let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            b.command(domain, json!({}));
        }
        b
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        self.to.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// A command to the page.
    pub fn command(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.call(Some(&s), method, params)
    }

    /// Loads `url` and waits for the document to be complete.
    pub fn navigate(&mut self, url: &str) {
        self.command("Page.navigate", json!({"url": url}));
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        );
    }

    /// Evaluates `expr` in the page and returns its (JSON) value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.command(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("`{expr}` threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; panics with `expr` after `timeout`.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expr);
            let truthy =
                !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for `{expr}`");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The text of the element with `data-testid`, or null.
    pub fn text(&mut self, testid: &str) -> String {
        let v = self.eval(&format!(
            "(document.querySelector('[data-testid=\"{testid}\"]') || {{}}).textContent || null"
        ));
        v.as_str()
            .unwrap_or_else(|| panic!("no element with data-testid={testid}"))
            .to_string()
    }

    /// Sets the viewport (CSS pixels; `mobile` also switches to a phone's layout rules).
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.command(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Saves a PNG of the whole page.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.command(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Waits for the next protocol event named `method` (seen before or arriving within
    /// `timeout`), removes it from [`Browser::events`] and returns its params.
    pub fn wait_event(&mut self, method: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
                return self.events.remove(i)["params"].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(v) if v.get("method").is_some() => self.events.push(v),
                Ok(_) => {}
                Err(_) => panic!("no {method} event within {timeout:?}"),
            }
        }
    }

    /// Drains pending protocol events and returns the page's errors: uncaught exceptions,
    /// `console.error` and error log entries (CSP violations, failed loads).
    pub fn page_errors(&mut self) -> Vec<String> {
        while let Ok(v) = self.from.try_recv() {
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(e["params"]["exceptionDetails"].to_string()),
                "Runtime.consoleAPICalled" if e["params"]["type"] == "error" => {
                    Some(e["params"]["args"].to_string())
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => {
                    Some(e["params"]["entry"]["text"].to_string())
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
