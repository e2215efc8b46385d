//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`), with the
//! harness's own HTTP client: JSON commands to a `chromedriver` that picks its own port (`0`)
//! and says which in its log. `Browser::start` panics, naming the package, when either program
//! is missing (scripts/test.sh installs both).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::http;
use crate::common::poll::poll;
use crate::common::process::{Process, Spec};

const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Browser {
    /// chromedriver, in its own process group with the browsers it starts.
    _driver: Process,
    addr: SocketAddr,
    session: String,
    /// The driver's log and the browser profile.
    _dir: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: the dashboard test drives headless Chromium; scripts/test.sh \
             installs it (apt-get install chromium)"
        );
        let driver_bin = which("chromedriver").unwrap_or_else(|| {
            panic!(
                "chromedriver is not on PATH: the dashboard test drives Chromium over WebDriver; \
                 scripts/test.sh installs it (apt-get install chromium-driver)"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        let mut driver = Process::start(
            "chromedriver",
            Spec::new(driver_bin).arg("--port=0"),
            &dir.path().join("chromedriver.log"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let port = driver
            .wait_log(Duration::from_secs(30), |log| {
                log.lines().find_map(|line| {
                    let rest = line.split("successfully on port ").nth(1)?;
                    rest.trim().trim_end_matches('.').parse::<u16>().ok()
                })
            })
            .await
            .unwrap_or_else(|e| panic!("chromedriver did not start: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1360,1500",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let mut browser = Browser {
            _driver: driver,
            addr,
            session: String::new(),
            _dir: dir,
        };
        let created = browser.cmd("POST", "/session", Some(caps)).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        browser
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let res = http::request(self.addr, method, path, &headers, &body).await;
        let v: Value = serde_json::from_str(&res.body)
            .unwrap_or_else(|_| panic!("WebDriver {path}: {}", res.body));
        assert!(
            res.status == 200,
            "WebDriver {method} {path} failed: {}",
            v["value"]
        );
        v["value"].clone()
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", &self.at("/url"), Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", &self.at("/url"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Visible text of the first element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        self.exec(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let el = self.element(css).await;
        self.cmd(
            "POST",
            &self.at(&format!("/element/{el}/click")),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.element(css).await;
        self.cmd(
            "POST",
            &self.at(&format!("/element/{el}/value")),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .cmd(
                "POST",
                &self.at("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", &self.at("/screenshot"), None).await;
        let png = base64_decode(b64.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Polls the page's text at `css` until `check` accepts it; at the deadline, panics with
    /// the last text and the whole page.
    pub async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let found = poll(Duration::from_secs(20), async || {
            let t = self.text(css).await;
            if check(&t) { Ok(t) } else { Err(t) }
        })
        .await;
        match found {
            Ok(t) => t,
            Err(t) => {
                let page = self.text("body").await;
                panic!(
                    "{what}: `{css}` shows {t:?} on {}:\n{page}",
                    self.url().await
                );
            }
        }
    }

    /// Ends the WebDriver session; dropping the browser then stops chromedriver and Chromium.
    pub async fn quit(self) {
        let path = self.at("");
        let _ = http::request(self.addr, "DELETE", &path, &[], "").await;
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !b"=\r\n ".contains(c)).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}
