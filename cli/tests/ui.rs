//! The live views as a user meets them: `studio ui` driven by a real
//! headless Chromium through WebDriver (Debian's `chromium` and
//! `chromedriver`, which scripts/test installs), its JSON API against the
//! DynamoDB store on moto_server, and `studio status --watch` and
//! `studio run`'s progress bar under a pseudo-terminal and into a pipe.
//! Waits are polls with a deadline.

use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[macro_use]
mod common;
use common::*;

/// Where the screenshots go (a test artifact): `STUDIO_UI_SCREENSHOTS`, or
/// `ui-screenshots` in cargo's temporary directory for tests.
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("STUDIO_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `studio ui --port 0` run by `cmd`: the process, the page's base URL
/// and the token of the address it printed (`BASE?token=TOKEN`).
fn start_ui(mut cmd: Command) -> (Stopped, String, String) {
    cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
    let (child, address) = studio_tests::spawn_announcing(cmd, "studio ui: ");
    let (base, token) = address
        .split_once("?token=")
        .unwrap_or_else(|| panic!("no token in {address}"));
    assert_eq!(token.len(), 32, "128 bits, hex: {token}");
    (Stopped(child), base.to_string(), token.to_string())
}

struct Stopped(Child);

impl Drop for Stopped {
    /// SIGTERM, as a user's Ctrl-C or a service manager stops it; SIGKILL
    /// only if it has not left within 10 s.
    fn drop(&mut self) {
        signal(self.0.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- WebDriver

/// A WebDriver session on headless Chromium, spoken to over HTTP (W3C
/// WebDriver: the protocol every browser driver serves).
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn tool(var: &str, default: &str, package: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_string());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: the browser test needs Debian's {package} (scripts/test installs it: apt-get install chromium chromium-driver), or set {var}"
    );
    path
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = tool(
            "STUDIO_TEST_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let chromium = tool("STUDIO_TEST_CHROMIUM", "/usr/bin/chromium", "chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A process group of its own, Chromium's processes in it too, so
        // that the end of the test stops them all: killing chromedriver
        // alone left the browser running after the test, reparented to
        // init (seen after a CI run, 2026-12-07).
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .is_some_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // Headless and closed off: this machine has no network beyond
        // loopback, and Chromium's own background calls must not wait on it.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            driver,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(e) = r["value"]["error"].as_str() {
            panic!("WebDriver {path}: {e}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `body` (a function body; `return` its answer) in the page.
    async fn js(&self, body: &str) -> Value {
        self.post("/execute/sync", json!({ "script": body, "args": [] }))
            .await
    }

    /// Polls `body` in the page until it returns something truthy.
    async fn until(&self, what: &str, limit: Duration, body: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(body).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the page says: {}",
                self.js("return document.querySelector('main').innerText")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A real click (pointer events through the browser), not a JS call.
    async fn click(&self, css: &str) {
        let el = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string();
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        let path = screenshots().join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        report!("screenshot: {}", path.display());
        path
    }

    async fn window(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session first (chromedriver then quits Chromium, its
        // crash handlers included, which leave the process group), then
        // stops the whole group: chromedriver and whatever Chromium left.
        if let Some((addr, path)) = self
            .session
            .strip_prefix("http://")
            .and_then(|s| s.split_once('/'))
        {
            if let Ok(mut c) = std::net::TcpStream::connect(addr) {
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    c,
                    "DELETE /{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = c.read_to_end(&mut Vec::new());
            }
        }
        let pgid = self.driver.id() as libc::pid_t;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A JS expression: the text of job `id`'s state cell in the list, or null.
fn state_cell(id: &str) -> String {
    format!(
        "(document.querySelector({})?.textContent.trim() ?? null)",
        js_str(&format!("tr[data-job-id=\"{id}\"] td.state .badge"))
    )
}

/// The page end to end on the local backend: a job reaching `finished` in
/// the list without a reload, an interrupted job's page with its log and
/// both attempts, the pools page's chart, Cancel on a running job, an
/// output downloaded through its link, and the page at a phone's width.
/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test]
async fn nothing_of_the_browser_outlives_the_test() {
    // Killing chromedriver alone once left Chromium running after CI,
    // reparented to init. Every Chromium process names its profile.
    let browser = Browser::start().await;
    let profile = browser._profile.path().display().to_string();
    assert!(
        !processes_with(&profile).is_empty(),
        "Chromium is not running with its profile {profile}"
    );
    drop(browser);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_with(&profile);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after the test's end: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_follows_jobs_cancels_and_charts_pools() {
    let h = Home::new();
    // `--open`, with a browser that records what it is given: the real
    // browser below opens that, as the one `--open` starts would.
    let opened = h.dir.path().join("opened");
    let recorder = script(
        h.dir.path(),
        "browser.sh",
        "#!/bin/sh\nprintf '%s\\n' \"$2\" > \"$1.part\" && mv \"$1.part\" \"$1\"\n",
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = h.cmd(&["ui", "--port", "0", "--open"]);
    cmd.env("STUDIO_BROWSER", format!("{recorder} {}", opened.display()));
    let (ui, url, token) = start_ui(cmd);
    let page = wait_until(
        "studio ui to start a browser",
        Duration::from_secs(20),
        || std::fs::read_to_string(&opened).ok(),
    );
    let page = page.trim();
    assert!(
        page.starts_with("file://") && !page.contains(&token),
        "{page}"
    );
    let browser = Browser::start().await;
    // A private page that leads to the printed address, whose token
    // becomes the page's cookie; then on to `/`, the token out of the
    // address bar.
    browser.goto(page).await;
    browser
        .until(
            "the page, its token out of the address bar",
            Duration::from_secs(30),
            &format!(
                "return location.origin + location.pathname === {} && location.search === '' && document.querySelector('main h1')",
                js_str(&url)
            ),
        )
        .await;
    browser.js("window.__loaded_once = true; return true").await;
    let detach = |args: &[&str]| -> String {
        let mut all = vec!["run", "--detach"];
        all.extend_from_slice(args);
        let out = h.run(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };

    // The list, open before the job is submitted, shows it come and
    // follows it to `finished`, without a reload. The job holds at epoch 5
    // until the list has shown it running with its progress (no race with
    // how fast the browser is).
    let gate = h.hold_train_at(5);
    let quick = detach(&["train.py", "--epochs", "10", "--epoch-seconds", "0.4"]);
    let first = browser
        .until(
            "the quick job in the list",
            Duration::from_secs(30),
            &format!("return {}", state_cell(&quick)),
        )
        .await;
    assert_ne!(
        first, "finished",
        "the list was opened before the job ended"
    );
    let progress = browser
        .until(
            "a progress bar on the running job",
            Duration::from_secs(30),
            &format!(
                "const p = document.querySelector('tr[data-job-id=\"{quick}\"] td.progress progress'); return p && p.value > 0 && p.value < 1 ? p.value : null"
            ),
        )
        .await;
    report!("progress seen in the list: {progress}");
    std::fs::write(&gate, "").unwrap();
    browser
        .until(
            "the quick job to reach finished in the list",
            Duration::from_secs(60),
            &format!("return {} === 'finished'", state_cell(&quick)),
        )
        .await;
    assert_eq!(
        browser.js("return window.__loaded_once === true").await,
        true,
        "the list changed without a reload"
    );
    browser.screenshot("jobs").await;

    // An interrupted job: its worker killed mid-run (held at epoch 4 until
    // then), attempt 2 elsewhere.
    std::fs::remove_file(&gate).unwrap();
    let gate = h.hold_train_at(4);
    let resumed = detach(&["train.py", "--epochs", "12", "--epoch-seconds", "0.3"]);
    wait_until(
        "the job to interrupt held at epoch 4",
        Duration::from_secs(60),
        || h.log(&resumed).contains("held at epoch 4").then_some(()),
    );
    h.kill_worker_of(&resumed);
    std::fs::write(&gate, "").unwrap();
    browser.goto(&format!("{url}#/jobs/{resumed}")).await;
    browser
        .until(
            "the interrupted job's page to show it finished after two attempts",
            Duration::from_secs(90),
            "return document.querySelector('#job-state')?.textContent.trim() === 'finished' && document.querySelectorAll('#attempts tr[data-attempt]').length === 2",
        )
        .await;
    let attempts = browser
        .js("return [...document.querySelectorAll('#attempts tr[data-attempt]')].map(r => r.dataset.attempt + ' ' + r.innerText)")
        .await;
    let attempts: Vec<String> = serde_json::from_value(attempts).unwrap();
    assert!(
        attempts[0].starts_with("1 ") && attempts[0].contains("interrupted"),
        "{attempts:?}"
    );
    assert!(
        attempts[1].starts_with("2 ") && attempts[1].contains("finished"),
        "{attempts:?}"
    );
    let log = browser
        .until(
            "the log's last line",
            Duration::from_secs(30),
            "const t = document.querySelector('#log')?.textContent || ''; return t.includes('training done') ? t : null",
        )
        .await;
    let log = log.as_str().unwrap();
    assert!(
        log.contains("epoch 1/12") && log.contains("resuming from checkpoint: epoch"),
        "{log}"
    );
    // The progress lines are the summary's bar, not the log's.
    assert!(!log.contains("STUDIO_PROGRESS="), "{log}");
    let timeline = browser
        .js("return document.querySelector('#timeline').innerText")
        .await;
    assert!(
        timeline.as_str().unwrap().contains("interrupted"),
        "the timeline shows the interruption: {timeline}"
    );
    // Its outputs download through their links, byte for byte.
    let href = browser
        .until(
            "the model's download link",
            Duration::from_secs(10),
            "const a = [...document.querySelectorAll('#outputs a')].find(a => a.textContent.includes('model.bin')); return a ? a.href : null",
        )
        .await;
    let body = reqwest::Client::new()
        .get(href.as_str().unwrap())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    let model = body.bytes().await.unwrap();
    assert_eq!(model.len(), 4 << 20, "model.bin is 4 MiB");
    browser.screenshot("job").await;

    // A long job to cancel, and the pool it keeps alive for the chart.
    let long = detach(&["train.py", "--epochs", "1000", "--epoch-seconds", "0.5"]);
    wait_until("the long job to run", Duration::from_secs(60), || {
        h.log(&long).contains("epoch 1/1000").then_some(())
    });
    browser.goto(&format!("{url}#/pools")).await;
    let points = browser
        .until(
            "the pool chart's size line",
            Duration::from_secs(30),
            "const l = document.querySelector('.pool svg.chart polyline.series-size'); return l && l.getAttribute('points').trim() ? l.getAttribute('points') : null",
        )
        .await;
    report!("pool size points: {points}");
    // Its labels render near the page's text size, not blown up with it.
    let label_px = browser
        .js("const svg = document.querySelector('.pool svg.chart'); const t = svg.querySelector('text'); return svg.getBoundingClientRect().width / svg.viewBox.baseVal.width * parseFloat(getComputedStyle(t).fontSize)")
        .await;
    let label_px = label_px.as_f64().unwrap();
    report!("pool chart labels: {label_px:.1} px");
    assert!(
        (9.0..=16.5).contains(&label_px),
        "chart labels {label_px:.1} px"
    );
    assert!(
        browser
            .js("return !!document.querySelector('.pool svg.chart polyline.series-depth')")
            .await
            == true
    );
    browser.screenshot("pools").await;

    browser.goto(&format!("{url}#/jobs/{long}")).await;
    browser
        .until(
            "the long job's page and its log",
            Duration::from_secs(30),
            "return document.querySelector('#job-state')?.textContent.trim() === 'running' && (document.querySelector('#log')?.textContent || '').includes('epoch 1/1000')",
        )
        .await;
    browser.click("#cancel").await;
    let asked = browser
        .call(reqwest::Method::GET, "/alert/text", None)
        .await;
    assert!(
        asked.as_str().unwrap().contains(&long),
        "the confirmation names the job: {asked}"
    );
    browser.post("/alert/accept", json!({})).await;
    browser
        .until(
            "the page to show the job cancelled",
            Duration::from_secs(30),
            "return document.querySelector('#job-state')?.textContent.trim() === 'cancelled'",
        )
        .await;
    let job = h.job(&long);
    assert_eq!(job["state"], "cancelled");
    let by = job["events"].as_array().unwrap().last().unwrap()["by"].clone();
    assert!(
        by.as_str().unwrap().starts_with("ui:"),
        "cancelled by the page: {by}"
    );
    assert!(
        browser.js("return !document.querySelector('#cancel') || document.querySelector('#cancel').hidden || document.querySelector('#cancel').offsetParent === null").await == true,
        "no Cancel on an ended job"
    );

    // A job that fails at once: the list says why under its state, and its
    // page that it left no files (not "yet").
    std::fs::write(
        h.work().join("fail.py"),
        "import sys\nprint('no data')\nsys.exit(3)\n",
    )
    .unwrap();
    let failed = detach(&["fail.py"]);
    browser.goto(&format!("{url}#/")).await;
    let why = browser
        .until(
            "the failed job's reason in the list",
            Duration::from_secs(60),
            &format!(
                "return document.querySelector({})?.textContent || null",
                js_str(&format!("tr[data-job-id=\"{failed}\"] td.state .why"))
            ),
        )
        .await;
    assert!(
        why.as_str().unwrap().contains('3'),
        "the exit status: {why}"
    );
    browser.goto(&format!("{url}#/jobs/{failed}")).await;
    browser
        .until(
            "the failed job's page to say it left no files",
            Duration::from_secs(30),
            "return [...document.querySelectorAll('p.muted')].some(p => p.textContent === 'This job left no output files.')",
        )
        .await;

    // A phone: nothing wider than the screen but the tables, which scroll.
    browser.window(390, 844).await;
    browser.goto(&url).await;
    assert_eq!(
        browser
            .js("return document.querySelector('#error').hidden")
            .await,
        true,
        "the cookie carries the token: {}",
        browser
            .js("return document.querySelector('#error').innerText")
            .await
    );
    browser
        .until(
            "the list at a phone's width",
            Duration::from_secs(30),
            &format!("return {}", state_cell(&quick)),
        )
        .await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert_eq!(overflow, 0, "the page fits a phone's width");
    let unlabelled = browser
        .js("return [...document.querySelectorAll('input, select')].filter(e => !e.labels || e.labels.length === 0).map(e => e.id)")
        .await;
    assert_eq!(unlabelled, json!([]), "every field has a label");
    browser.screenshot("jobs-phone").await;

    // Stopped (SIGTERM), it leaves nothing behind: the output that passed
    // through on its way to the browser went with it.
    let pid = ui.0.id();
    let scratch = h.path().join(format!("ui-scratch-{pid}"));
    assert!(scratch.is_dir(), "{}", scratch.display());
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        scratch.metadata().unwrap().permissions().mode() & 0o777,
        0o700
    );
    drop(ui);
    assert!(!scratch.exists(), "{} left behind", scratch.display());
}

// ---------------------------------------------------------- API on DynamoDB

/// The API over the DynamoDB store on moto, behind the fidelity proxy so
/// every call is counted: pages follow each other without a gap or a
/// repeat, newest first; the filters; ETags; cancel; env values never
/// leave; and the listing is Query on the `by-created` index, never a Scan.
#[tokio::test]
async fn the_api_on_dynamodb_pages_through_the_index_and_cancels() {
    use studio_core::ports::JobStore;
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let proxy = studio_tests::fidelity::Fidelity::start(
        &studio_tests::moto_endpoint(),
        studio_core::clock::ManualClock::new(studio_core::clock::Timestamp(0)),
    )
    .await;
    let door = proxy.door("ui").await;
    let store = studio_aws::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &cfg.jobs_table,
        &cfg.pools_table,
    );
    // The store's own paging and filters are `tests/tests/listing.rs`'s;
    // here, that the API carries them.
    let newest_first = studio_tests::listing_jobs(&store).await;
    let h = Home::new();
    let mut cmd = h.cmd(&["ui", "--port", "0"]);
    cmd.env("AWS_ENDPOINT_URL", &door)
        .env("AWS_REGION", "us-east-1")
        .env("STUDIO_JOBS_TABLE", &cfg.jobs_table)
        .env("STUDIO_POOLS_TABLE", &cfg.pools_table)
        .env("STUDIO_SUBMIT_QUEUE", &cfg.submit_queue)
        .env("STUDIO_ARTIFACT_BUCKET", &cfg.bucket);
    let (_ui, url, token) = start_ui(cmd);

    // Without the token, nothing; the printed address sets it as a cookie.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for req in [
        plain.get(format!("{url}api/v1/jobs")),
        plain.get(format!("{url}app.js")),
        plain
            .get(format!("{url}api/v1/jobs"))
            .bearer_auth("0".repeat(32)),
        plain
            .get(format!("{url}api/v1/jobs"))
            .header("Cookie", "studio_ui=nope"),
        plain.get(format!("{url}?token=wrong")),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("the address studio ui printed"));
    }
    let r = plain
        .get(format!("{url}?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!("studio_ui={token};"))
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // A page that moves on to `/` itself (a redirect's next hop would go
    // without a SameSite=Strict cookie when another site started it).
    let enter = r.text().await.unwrap();
    assert!(enter.contains("location.replace(\"/\")"), "{enter}");
    let by_cookie = plain
        .get(format!("{url}api/v1/jobs?limit=1"))
        .header("Cookie", format!("other=1; studio_ui={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);

    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .unwrap();
    let get = |path: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http.get(format!("{url}{path}")).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Every job once, newest first (ties by id, descending), 20 a page.
    let want: Vec<&str> = newest_first.iter().map(|j| j.id.as_str()).collect();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = cursor
            .as_deref()
            .map_or(String::new(), |c| format!("&cursor={c}"));
        let (status, page) = get(format!("api/v1/jobs?limit=20{q}")).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "the pages end");
    }
    assert_eq!(seen, want, "every job once, newest first");
    assert_eq!(pages, 3);

    // The filters reach the store.
    let pool = newest_first[0].pool.to_string();
    let (_, page) = get(format!(
        "api/v1/jobs?state=queued&owner=alice&pool={pool}&limit=200"
    ))
    .await;
    let got: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = newest_first
        .iter()
        .filter(|j| {
            j.state == studio_core::job::JobState::Queued
                && j.spec.owner == "alice"
                && j.pool.as_str() == pool
        })
        .map(|j| j.id.as_str())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want, "state, owner and pool filters");
    assert_eq!(page["jobs"][0]["owner"], "alice");

    // Bad parameters say what is wrong.
    for (q, says) in [
        ("state=sleeping", "state 'sleeping'"),
        ("limit=0", "limit '0'"),
        ("limit=500", "limit '500'"),
        ("cursor=garbage", "cursor 'garbage'"),
    ] {
        let (status, body) = get(format!("api/v1/jobs?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{q}: {body}"
        );
    }

    // An unchanged answer is a 304 without a body.
    let r = http
        .get(format!("{url}api/v1/jobs?limit=5"))
        .send()
        .await
        .unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_string();
    let again = http
        .get(format!("{url}api/v1/jobs?limit=5"))
        .header("If-None-Match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());

    // Env values never leave the store.
    let r = http
        .get(format!("{url}api/v1/jobs/job007"))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    let detail: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(detail["env"], json!({"TOKEN": "••••"}));
    assert_eq!(get("api/v1/jobs/nosuchjob".into()).await.0, 404);

    // Cancel: a form's content type is refused and changes nothing; JSON
    // cancels, recorded as the page's user.
    let cancel = |content_type: &'static str| {
        http.post(format!("{url}api/v1/jobs/job001/cancel"))
            .header("Content-Type", content_type)
            .body("{}")
            .send()
    };
    let form = cancel("application/x-www-form-urlencoded").await.unwrap();
    assert_eq!(form.status(), 415);
    let id1 = studio_core::ids::JobId::new("job001").unwrap();
    assert_eq!(
        store.get_job(&id1).await.unwrap().unwrap().state,
        studio_core::job::JobState::Queued
    );
    let ok = cancel("application/json").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["outcome"], "cancelled");
    let j = store.get_job(&id1).await.unwrap().unwrap();
    assert_eq!(j.state, studio_core::job::JobState::Cancelled);
    assert!(j.events.last().unwrap().by.starts_with("ui:"));
    let twice = cancel("application/json; charset=utf-8").await.unwrap();
    assert_eq!(
        twice.json::<Value>().await.unwrap()["outcome"],
        "already ended: cancelled"
    );

    // Another Host (DNS rebinding) is not served.
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.write_all(b"GET /api/v1/jobs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");

    // The listing is a Query of the index; nothing scanned the jobs.
    let calls = proxy.calls_through("ui");
    report!("calls of studio ui to DynamoDB: {calls:?}");
    assert!(calls.get("Query").copied().unwrap_or(0) >= 4, "{calls:?}");
    assert!(!calls.contains_key("Scan"), "{calls:?}");
}

// ------------------------------------------------------------- terminals

/// A process on a pseudo-terminal of `cols`×`rows`, its controlling
/// terminal, with everything it writes collected.
struct Pty {
    master: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
    child: Child,
}

impl Pty {
    fn spawn(cmd: Command, cols: u16, rows: u16) -> Pty {
        Pty::spawn_with(cmd, cols, rows, false)
    }

    /// With `pipe_stdout`, stdout is a pipe (`child.stdout`), as in
    /// `studio run … | tee log`; stdin and stderr stay the terminal.
    fn spawn_with(mut cmd: Command, cols: u16, rows: u16, pipe_stdout: bool) -> Pty {
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two fds we then own.
        let rc =
            unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
        assert_eq!(rc, 0, "openpty");
        let (master, slave) =
            unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(if pipe_stdout {
                Stdio::piped()
            } else {
                slave.try_clone().unwrap().into()
            })
            .stderr(slave);
        // SAFETY: async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let out = Arc::new(Mutex::new(Vec::new()));
        let (sink, mut reader) = (out.clone(), master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty { master, out, child }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> String {
        wait_until(what, limit, || {
            let t = self.text();
            f(&t).then_some(t)
        })
    }

    fn key(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ENTER: &str = "\x1b[?1049h\x1b[?25l";
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

/// `status --watch` on a terminal takes the screen and redraws the table in
/// place (home, each line cleared, the rest cleared: no scrolling), shows
/// the job's state and progress bar as they change, gives the terminal
/// back around Ctrl-Z, and leaves on `q`, restoring it.
#[test]
fn status_watch_on_a_terminal_redraws_in_place_and_q_leaves() {
    let h = Home::new();
    let out = h.run(&[
        "run",
        "--detach",
        "train.py",
        "--epochs",
        "10",
        "--epoch-seconds",
        "0.4",
    ]);
    let id = stdout(&out).trim().to_string();
    let mut cmd = h.cmd(&["status", "--watch", "--every", "200ms"]);
    cmd.env("TERM", "xterm");
    let mut pty = Pty::spawn(cmd, 150, 20);
    pty.wait_for(
        "the job running with a progress bar",
        Duration::from_secs(60),
        |t| {
            t.lines()
                .any(|l| l.contains(&id) && l.contains("running") && l.contains("[#"))
        },
    );
    let text = pty.wait_for("the job finished", Duration::from_secs(60), |t| {
        t.contains(&id)
            && t.rsplit("\x1b[H")
                .next()
                .is_some_and(|f| f.contains("finished") && f.contains("100%"))
    });
    assert!(
        text.starts_with(ENTER),
        "takes the screen first: {:?}",
        &text[..40.min(text.len())]
    );
    let frames: Vec<&str> = text.split("\x1b[H").skip(1).collect();
    assert!(frames.len() >= 5, "redrawn, {} frames", frames.len());
    for f in &frames {
        // Each frame: lines cleared to their end, then everything below;
        // never more lines than the terminal has, and never a bare newline.
        assert!(
            f.ends_with("\x1b[J") || f.ends_with("\x1b[J\x1b[?25h\x1b[?1049l"),
            "{f:?}"
        );
        assert!(f.matches("\r\n").count() < 20, "{f:?}");
        assert_eq!(f.matches('\n').count(), f.matches("\r\n").count(), "{f:?}");
        assert!(f
            .lines()
            .all(|l| l.trim_end_matches("\x1b[K").chars().count() <= 150 + 8));
    }
    let last = frames.last().unwrap();
    assert!(
        last.contains("JOB")
            && last.contains("PROGRESS")
            && last.contains("[####################] 100%"),
        "{last:?}"
    );

    // Ctrl-Z (SIGTSTP: a terminal sends it to a foreground job; this test's
    // process group is not one, so it sends it itself): the terminal back,
    // stopped; continued: the screen again.
    let pid = pty.child.id();
    signal(pid, libc::SIGTSTP);
    wait_until("the watch to stop", Duration::from_secs(10), || {
        (process_state(pid).as_deref() == Some("T")).then_some(())
    });
    // Given back before stopping: nothing drawn after the screen was left.
    let stopped = pty.wait_for("the terminal given back", Duration::from_secs(10), |t| {
        t.rfind(LEAVE).is_some_and(|at| !t[at..].contains("\x1b[H"))
    });
    let before = stopped.len();
    signal(pid, libc::SIGCONT);
    pty.wait_for("the screen taken again", Duration::from_secs(10), |t| {
        t.len() > before && t[before..].contains(ENTER) && t[before..].contains("\x1b[H")
    });

    pty.key(b"q");
    let status = wait_until("the watch to leave on q", Duration::from_secs(10), || {
        pty.child.try_wait().unwrap()
    });
    assert!(status.success());
    // The reader of the terminal may still be taking the last bytes from it.
    pty.wait_for("the terminal restored", Duration::from_secs(10), |t| {
        t.ends_with(LEAVE)
    });
}

/// Ctrl-C leaves as q does, and the terminal is restored.
#[test]
fn status_watch_leaves_on_ctrl_c_restoring_the_terminal() {
    let h = Home::new();
    let mut pty = Pty::spawn(h.cmd(&["status", "--watch", "--every", "200ms"]), 100, 10);
    pty.wait_for("a frame", Duration::from_secs(30), |t| {
        t.contains("no jobs")
    });
    pty.key(b"\x03");
    let status = wait_until(
        "the watch to leave on Ctrl-C",
        Duration::from_secs(10),
        || pty.child.try_wait().unwrap(),
    );
    assert!(status.success(), "{status:?}");
    // The reader of the terminal may still be taking the last bytes from it.
    pty.wait_for("the terminal restored", Duration::from_secs(10), |t| {
        t.ends_with(LEAVE)
    });
}

/// Into a pipe, `status --watch` writes plain lines, one when a job appears
/// or changes (no escape codes, no redraws), and ends quietly on SIGTERM.
#[test]
fn status_watch_into_a_pipe_writes_a_line_per_change() {
    let h = Home::new();
    let mut watch = h
        .cmd(&["status", "--watch", "--every", "200ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (sink, out) = (lines.clone(), watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            sink.lock().unwrap().push(l);
        }
    });
    let out = h.run(&[
        "run",
        "--detach",
        "train.py",
        "--epochs",
        "4",
        "--epoch-seconds",
        "0.3",
    ]);
    let id = stdout(&out).trim().to_string();
    wait_until("the job's finished line", Duration::from_secs(60), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&id) && l.contains("finished"))
            .then_some(())
    });
    signal(watch.id(), libc::SIGTERM);
    let status = wait_until("the watch to end", Duration::from_secs(10), || {
        watch.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
    let lines = lines.lock().unwrap().clone();
    let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&id)).collect();
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "plain text: {lines:?}"
    );
    assert!(mine.len() >= 3, "a line per change: {mine:#?}");
    for pair in mine.windows(2) {
        let strip = |l: &str| {
            l.split_once("  ")
                .map(|(_, rest)| rest.to_string())
                .unwrap()
        };
        assert_ne!(
            strip(pair[0]),
            strip(pair[1]),
            "only changes are written: {mine:#?}"
        );
    }
    assert!(
        mine.last().unwrap().contains("finished") && mine.last().unwrap().contains("100%"),
        "{mine:#?}"
    );
    assert!(mine.iter().any(|l| l.contains("running")), "{mine:#?}");
    assert!(
        mine[0].starts_with("20"),
        "each line starts with its time: {}",
        mine[0]
    );
}

/// A waiting `run` on a terminal keeps a progress bar under the script's
/// output: drawn on its own line, cleared before output, gone at the end.
#[test]
fn run_on_a_terminal_shows_a_progress_bar_under_the_output() {
    let h = Home::new();
    // Held at epoch 3 until the test has stopped and resumed the run.
    let gate = h.hold_train_at(3);
    let mut cmd = h.cmd(&["run", "train.py", "--epochs", "6", "--epoch-seconds", "0.4"]);
    cmd.env("TERM", "xterm");
    let mut pty = Pty::spawn(cmd, 120, 30);
    // Ctrl-Z with the bar up takes the bar down before stopping; `fg`
    // (SIGCONT) and the run goes on.
    pty.wait_for("a bar", Duration::from_secs(60), |t| {
        t.contains("% studio: running")
    });
    let pid = pty.child.id();
    signal(pid, libc::SIGTSTP);
    wait_until("the run to stop", Duration::from_secs(10), || {
        (process_state(pid).as_deref() == Some("T")).then_some(())
    });
    let stopped = pty.wait_for("the bar taken down", Duration::from_secs(10), |t| {
        t.rsplit_once("% studio: running")
            .is_some_and(|(_, after)| after.contains("\r\x1b[2K"))
    });
    signal(pid, libc::SIGCONT);
    std::fs::write(&gate, "").unwrap();
    let status = wait_until("the run to end", Duration::from_secs(90), || {
        pty.child.try_wait().unwrap()
    });
    assert!(status.success(), "{}", pty.text());
    let text = pty.text();
    assert!(text.len() > stopped.len(), "it went on after SIGCONT");
    assert!(text.contains("training done"), "{text}");
    let bars = text
        .split("\r\x1b[2K")
        .filter(|s| s.starts_with('[') && s.contains("% studio: running"))
        .count();
    assert!(bars >= 2, "the bar drawn as progress moved: {text:?}");
    for line in text.split("\r\n") {
        if line.contains("studio: running") {
            // Drawn where a line starts, never after part of the script's.
            assert!(line.starts_with("\r\x1b[2K"), "{line:?}");
        }
        // What the line finally shows is the script's or the bar, not both.
        let shown = line.rsplit("\r\x1b[2K").next().unwrap();
        assert!(
            !(shown.contains("epoch ") && shown.contains("studio: running")),
            "{line:?}"
        );
    }
    let end = text.rsplit("\r\n").find(|l| !l.is_empty()).unwrap();
    assert!(
        !end.rsplit("\r\x1b[2K")
            .next()
            .unwrap()
            .contains("studio: running"),
        "the bar is gone at the end: {end:?}"
    );
}

/// Into a pipe (`studio run … | tee log`), the reader may print on the same
/// terminal at any time, so there is no bar on stderr: the script's output
/// goes whole into the pipe, and the terminal sees no bar.
#[test]
fn run_into_a_pipe_draws_no_bar_on_the_terminal() {
    let h = Home::new();
    let mut cmd = h.cmd(&["run", "train.py", "--epochs", "4", "--epoch-seconds", "0.3"]);
    cmd.env("TERM", "xterm");
    let mut pty = Pty::spawn_with(cmd, 120, 30, true);
    let mut piped = String::new();
    pty.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut piped)
        .unwrap();
    let status = wait_until("the run to end", Duration::from_secs(60), || {
        pty.child.try_wait().unwrap()
    });
    assert!(status.success(), "{}", pty.text());
    assert!(
        piped.contains("epoch 4/4") && piped.contains("training done"),
        "{piped}"
    );
    let terminal = pty.text();
    assert!(
        !terminal.contains("studio: running"),
        "no bar: {terminal:?}"
    );
    assert!(
        terminal.contains("finished"),
        "state changes still on stderr: {terminal:?}"
    );
}

/// On a terminal, `studio ui` gives its address once (stdout, which
/// scripts read), not again on stderr; Ctrl-C stops it.
#[test]
fn ui_on_a_terminal_prints_its_address_once() {
    let h = Home::new();
    let mut pty = Pty::spawn(h.cmd(&["ui", "--port", "0"]), 200, 20);
    let text = pty.wait_for("serving", Duration::from_secs(30), |t| {
        t.contains("Ctrl-C to stop")
    });
    assert_eq!(text.matches("http://").count(), 1, "{text}");
    assert!(text.contains("studio ui: http://"), "{text}");
    pty.key(b"\x03");
    let status = wait_until("ui to stop on Ctrl-C", Duration::from_secs(10), || {
        pty.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
}
