//! A real browser for tests: Debian's headless Chromium driven through ChromeDriver's W3C
//! WebDriver endpoint (a few JSON requests: open a session, load a page, run a script in it,
//! take a screenshot). The page stays open, so a test sees what the page's own scripts do
//! to it over time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use foundation::process::Guard;
use serde_json::{json, Value};

/// A ChromeDriver process with one Chromium session. Dropping it ends the session (Chromium
/// exits) and stops the driver.
#[derive(Debug)]
pub struct Browser {
    driver: Option<Guard>,
    base: String,
    session: String,
    profile: PathBuf,
    agent: ureq::Agent,
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless Chromium session (a fresh profile,
    /// no background networking: this machine's network is closed).
    pub fn start() -> anyhow::Result<Browser> {
        let port = crate::free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut driver = Guard::spawn("chromedriver (apt install chromium-driver)", &mut cmd)?;
        driver.wait_ready(Duration::from_secs(20), "listening", || crate::listening(port))?;
        let profile = std::env::temp_dir().join(format!("chromium-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&profile)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut b = Browser {
            driver: Some(driver),
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            profile,
            agent,
        };
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1440,900",
                    format!("--user-data-dir={}", b.profile.display()),
                ]
            }
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .context("opening a Chromium session")?;
        b.session = v["sessionId"]
            .as_str()
            .context("no session id in ChromeDriver's answer")?
            .to_string();
        Ok(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut resp = match body {
            Some(b) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string())?,
            None if method == "DELETE" => self.agent.delete(&url).call()?,
            None => self.agent.get(&url).call()?,
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(64 << 20).read_to_string()?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{method} {path}: {text}"))?;
        anyhow::ensure!(status == 200, "{method} {path}: {status} {}", v["value"]);
        Ok(v["value"].clone())
    }

    fn at(&self, what: &str) -> String {
        format!("/session/{}/{what}", self.session)
    }

    /// Loads `url` (returns when the page has loaded).
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", &self.at("url"), Some(json!({ "url": url })))?;
        Ok(())
    }

    /// Runs `script` (a function body: `return ...`) in the page; its JSON result.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            &self.at("execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.call("GET", &self.at("screenshot"), None)?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(v.as_str().context("no screenshot data")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(mut d) = self.driver.take() {
            d.terminate(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
