//! A headless Chromium (`/usr/bin/chromium`) driven through `chromedriver` (WebDriver) with
//! fantoccini, shared by the browser tests (`tests/dashboard.rs`, `tests/client_page.rs`).
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run` installs them); a
//! test fails, saying so, when either is missing. `CHROMIUM` and `CHROMEDRIVER` override the
//! paths.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// chromedriver (a child process of this test, in a process group of its own that is killed
/// on drop, Chromium with it) and a browser session.
pub struct Browser {
    driver: Child,
    pub client: Client,
    width: u32,
    height: u32,
    _profile: TempDir,
}

/// A scratch directory removed on drop (the browser profile).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium is chromedriver's child, not ours: killing chromedriver alone would leave
        // it running. The group is the one chromedriver was started in (its own id), so this
        // stops exactly what this test started.
        #[cfg(target_os = "linux")]
        if let Some(pid) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn binary(var: &str, default: &str, package: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} not found: the browser tests need the Debian package `{package}` \
         (apt-get install -y chromium chromium-driver), or set {var} to its path"
    );
    path
}

impl Browser {
    /// A desktop-sized window (1366 × 900).
    pub async fn start() -> Self {
        Self::start_sized(1366, 900).await
    }

    /// A window of `width` × `height` CSS pixels (a phone: 360 × 740).
    pub async fn start_sized(width: u32, height: u32) -> Self {
        let chromium = binary("CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = binary("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            // Its own process group, which Chromium joins: see `Drop`.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {chromedriver}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer on {url} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("wm-dash-chromium-{}", uuid::Uuid::new_v4()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", format!("--window-size={width},{height}"),
                    "--no-first-run", "--no-default-browser-check",
                    // No crash handler: it would start in a session of its own and outlive
                    // the test.
                    "--disable-breakpad", "--disable-crash-reporter",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("could not open a Chromium session through {url}: {e}"));
        Browser {
            driver,
            client,
            width,
            height,
            _profile: TempDir(profile),
        }
    }
}

/// Where screenshots named `kind` go: `target/<kind>-screenshots/` (`$CARGO_TARGET_DIR` when
/// set), or `commit_to` under the repository when `UPDATE_SCREENSHOTS=1` (the ones the README
/// shows).
pub fn screenshot_dir(kind: &str, commit_to: Option<&str>) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = match commit_to {
        Some(dir) if std::env::var_os("UPDATE_SCREENSHOTS").is_some() => root.join(dir),
        _ => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join(format!("{kind}-screenshots")),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Saves the whole page as `dir/name.png` (the window is made tall enough for it first).
    pub async fn save_screenshot(&self, dir: &std::path::Path, name: &str) {
        let c = &self.client;
        let height = c
            .execute("return document.documentElement.scrollHeight;", vec![])
            .await
            .unwrap()
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 4000);
        let (w, h) = (self.width, self.height);
        c.set_window_size(w, height as u32 + 100).await.unwrap();
        let png = c.screenshot().await.unwrap();
        c.set_window_size(w, h).await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

/// The text of the first element matching `css`, once `ok` holds for it (20 s at most).
/// Clicks the element `css` finds.
pub async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The text of the element `css` finds.
pub async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{css}` never matched; last text: {last:?}; url {:?}",
            c.current_url().await.map(|u| u.to_string())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
