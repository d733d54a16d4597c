//! The page in a real browser: headless Chromium running WebGPU on its software Vulkan
//! (SwiftShader), driven through chromedriver's WebDriver API, against the native CPU twins.
//!
//! Without Chromium these tests skip with a loud message, unless `SELFISH_REQUIRE_BROWSER=1`
//! (CI) makes that a failure. They build the page first with `web/build.sh`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Flags that give headless Chromium a WebGPU adapter on SwiftShader, and keep it off the
/// network this machine does not have.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--enable-features=Vulkan",
    "--use-vulkan=swiftshader",
    "--use-webgpu-adapter=swiftshader",
    "--use-angle=swiftshader",
    "--disable-gpu-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
];

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Chromium and chromedriver, or `None` (after saying so) when this machine has neither.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("SELFISH_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .or_else(|| on_path("chromium-browser"));
    let driver = on_path("chromedriver");
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, _) => {
            let missing = if c.is_none() {
                "chromium"
            } else {
                "chromedriver"
            };
            let msg = format!(
                "{missing} is not installed, so the page was NOT tested in a browser: \
                 `apt-get install chromium chromium-driver` (Debian) to run these tests"
            );
            if std::env::var("SELFISH_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("SELFISH_REQUIRE_BROWSER=1: {msg}");
            }
            eprintln!("\n{}\nSKIPPED: {msg}\n{}\n", "!".repeat(78), "!".repeat(78));
            None
        }
    }
}

/// Builds web/pkg once per test run.
fn build_page() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(Path::new(REPO).join("web/build.sh"))
            .output()
            .map_err(|e| format!("cannot run web/build.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "web/build.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

/// A child process ended with the test.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `selfish serve` on a free port; the page's URL.
fn serve() -> (Reaped, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_selfish"))
        .args(["serve", "--port", "0", "--dir", REPO])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("selfish serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (Reaped(child), url)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange with a JSON body, enough for chromedriver (which keeps the
/// connection open after its answer, so the body is read by its length).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(900)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut len = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A headless Chromium under chromedriver.
struct Browser {
    port: u16,
    session: String,
    _driver: Reaped,
    _profile: PathBuf,
}

/// One browser at a time: two software-rendered WebGPU runs on two cores would only slow
/// each other down.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

impl Browser {
    fn open(chromium: &Path, driver: &Path, tag: &str) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Reaped(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(port, "GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = common::tempdir(&format!("chromium-{tag}"));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "timeouts": {"script": 120_000, "pageLoad": 60_000},
        }}});
        let r = http(port, "POST", "/session", Some(&caps)).unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused a session: {r}"))
            .to_string();
        Browser {
            port,
            session,
            _driver: driver,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let r = http(self.port, method, &path, body.as_ref()).unwrap();
        if r["value"]["error"].is_string() {
            panic!("WebDriver {what}: {}", r["value"]);
        }
        r["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "url", Some(json!({ "url": url })));
    }

    fn exec(&self, script: &str) -> Value {
        self.call(
            "POST",
            "execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Waits until the page says `selfish: done` or `selfish: error`; the title and the
    /// run's JSON.
    fn outcome(&self, limit: Duration) -> (String, Value) {
        let deadline = Instant::now() + limit;
        loop {
            let title = self.exec("return document.title;");
            let title = title.as_str().unwrap_or_default().to_string();
            if title == "selfish: done" || title == "selfish: error" {
                let text = self.exec("return document.getElementById('result').textContent;");
                let result = serde_json::from_str(text.as_str().unwrap_or("null")).unwrap();
                return (title, result);
            }
            if Instant::now() > deadline {
                let msg = self.exec("return document.getElementById('message').textContent;");
                panic!("the page did not finish in {limit:?} (title {title:?}, message {msg})");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The bytes behind a download link, exactly as the browser would save them.
    fn download(&self, id: &str) -> Vec<u8> {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             fetch(document.getElementById('{id}').href)
               .then((r) => r.arrayBuffer())
               .then((b) => {{
                 const u = new Uint8Array(b); let s = '';
                 for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
                 done(btoa(s));
               }})
               .catch((e) => done('ERROR ' + e));"
        );
        let v = self.call(
            "POST",
            "execute/async",
            Some(json!({"script": script, "args": []})),
        );
        let text = v.as_str().unwrap();
        assert!(!text.starts_with("ERROR"), "download {id}: {text}");
        base64(text)
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", "screenshot", None);
        base64(v.as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn base64(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, &c)| a | (val(c) as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Everything a browser test needs, or `None` when it is skipped.
fn page(tag: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Reaped, String, Browser)> {
    let (chromium, driver) = browser()?;
    build_page();
    let lock = ONE_BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    let (server, url) = serve();
    let b = Browser::open(&chromium, &driver, tag);
    Some((lock, server, url, b))
}

fn selfish(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_selfish"))
        .args(args)
        .current_dir(REPO)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "selfish {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Settings of the comparison: the URL's and `selfish train`'s spelling of the same run.
const RUN: &[(&str, &str)] = &[
    ("chars", "30000"),
    ("config", "tiny"),
    ("steps", "24"),
    ("loss", "margin:1"),
    ("seed", "5"),
    ("log-interval", "1"),
    ("eval-interval", "8"),
    ("eval-batches", "4"),
];

fn query(run: &[(&str, &str)]) -> String {
    run.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The page's `?chars=N` text as a file for the native runs.
fn corpus(run: &[(&str, &str)], dir: &Path) -> PathBuf {
    let n: usize = run
        .iter()
        .find(|(k, _)| *k == "chars")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let text = std::fs::read_to_string(Path::new(REPO).join("data/tinyshakespeare.txt")).unwrap();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text.chars().take(n).collect::<String>()).unwrap();
    path
}

fn native_run(run: &[(&str, &str)], out: &Path, extra: &[&str]) -> Vec<Value> {
    let data = corpus(run, out.parent().unwrap());
    let mut args = vec!["train", "--backend", "cpu", "--out", out.to_str().unwrap()];
    args.extend([
        "--data",
        Box::leak(data.display().to_string().into_boxed_str()),
    ]);
    for (k, v) in run.iter().filter(|(k, _)| *k != "chars") {
        args.push(Box::leak(format!("--{k}").into_boxed_str()));
        args.push(v);
    }
    args.extend_from_slice(extra);
    selfish(&args);
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Largest relative difference of the losses (training, and validation per language) of
/// two logs of the same steps.
fn max_loss_diff(page: &[Value], native: &[Value]) -> f64 {
    assert_eq!(page.len(), native.len(), "logged steps differ");
    let mut worst = 0.0f64;
    for (p, n) in page.iter().zip(native) {
        assert_eq!(p["step"], n["step"]);
        worst = worst.max(rel(
            p["loss"].as_f64().unwrap(),
            n["loss"].as_f64().unwrap(),
        ));
        assert_eq!(p["val_loss"].is_null(), n["val_loss"].is_null());
        for (pv, nv) in p["val_loss"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(n["val_loss"].as_array().into_iter().flatten())
        {
            assert_eq!(pv[0], nv[0]);
            worst = worst.max(rel(pv[1].as_f64().unwrap(), nv[1].as_f64().unwrap()));
        }
    }
    worst
}

#[test]
fn browser_training_matches_the_cpu_twins() {
    let Some((_lock, _server, url, b)) = page("train") else {
        return;
    };
    let t0 = Instant::now();
    b.goto(&format!("{url}?autorun=1&{}", query(RUN)));
    let (title, r) = b.outcome(Duration::from_secs(600));
    assert_eq!(title, "selfish: done", "{r}");
    let page_s = t0.elapsed().as_secs_f64();
    let model = b.download("dl-model");

    let dir = common::tempdir("web-native");
    let t0 = Instant::now();
    let native = native_run(RUN, &dir.join("run"), &[]);
    let native_s = t0.elapsed().as_secs_f64();
    let state = selfish::tensorfile::load(&dir.join("run/state.safetensors")).unwrap();
    let saved = selfish::checkpoint::saved_config(&state).unwrap();
    assert_eq!(r["train_config"], saved, "the page ran other settings");
    let page_log = r["log"].as_array().unwrap();
    assert_eq!(page_log.len(), 24);
    let worst = max_loss_diff(page_log, &native);
    eprintln!(
        "page on {}: {} steps, max relative loss difference to --backend cpu {worst:.2e}; \
         page {page_s:.1} s (training {:.1} s, {:.0} tokens/s), native cpu {native_s:.1} s",
        r["adapter"], r["step"], r["seconds"], r["tokens_per_s"]
    );
    assert!(worst <= 1e-4, "browser and CPU losses differ by {worst:e}");

    // The downloaded model evaluates natively as the page evaluated it.
    let path = dir.join("downloaded.safetensors");
    std::fs::write(&path, &model).unwrap();
    let ours: Value = serde_json::from_str(&selfish(&[
        "eval",
        "--checkpoint",
        path.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
        "--data",
        corpus(RUN, &dir).to_str().unwrap(),
    ]))
    .unwrap();
    let evals = r["evaluation"].as_array().unwrap();
    assert_eq!(evals.len(), 2, "{r}");
    for e in evals {
        let n = &ours[e["language"].as_str().unwrap()];
        assert_eq!(e["tokens"], n["tokens"]);
        // Rates (shares of the targets): absolute; losses and perplexities: relative.
        for (k, relative) in [
            ("loss", true),
            ("ppl", true),
            ("best_ppl", true),
            ("accuracy", false),
            ("recall_at_5", false),
            ("mrr", false),
        ] {
            let (p, q) = (e[k].as_f64().unwrap(), n[k].as_f64().unwrap());
            let d = if relative { rel(p, q) } else { (p - q).abs() };
            assert!(d <= 1e-4, "{} {k}: page {p} native {q}", e["language"]);
        }
    }
    let sample = b.exec("return document.getElementById('sample').textContent;");
    assert!(sample.as_str().unwrap().len() > 200, "no sample: {sample}");
}

#[test]
fn browser_passes_the_gpt_tiny_fixture() {
    let Some((_lock, _server, url, b)) = page("fixture") else {
        return;
    };
    b.goto(&format!("{url}?fixture=1"));
    let (title, r) = b.outcome(Duration::from_secs(300));
    assert_eq!(title, "selfish: done", "{r}");
    let rows = r["rows"].as_array().unwrap();
    let bad: Vec<&Value> = rows.iter().filter(|r| r["ok"] != true).collect();
    eprintln!(
        "fixture in the browser on {}: {} of {} rows within tolerance",
        r["adapter"],
        rows.len() - bad.len(),
        rows.len()
    );
    assert!(rows.len() > 30, "{r}");
    assert!(bad.is_empty(), "rows out of tolerance: {bad:?}");
}

/// A native run stopped part-way continues in the page exactly (its state uploaded), and a
/// device lost later still leaves the page's last checkpoint to download.
#[test]
fn browser_resumes_a_native_state_and_survives_a_lost_device() {
    let Some((_lock, _server, url, b)) = page("resume") else {
        return;
    };
    let dir = common::tempdir("web-resume");
    let whole = native_run(RUN, &dir.join("whole"), &[]);
    native_run(RUN, &dir.join("half"), &["--stop-after", "8"]);

    // Upload the state of step 8 (the page takes its settings from the file), and lose the
    // device once step 20 is logged: the checkpoint of step 16 must remain.
    b.goto(&format!("{url}?lose_at=20&{}", query(&RUN[..1])));
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.exec("return document.body.dataset.ready || '';") != "1" {
        assert!(Instant::now() < deadline, "the page never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let input = b.call(
        "POST",
        "element",
        Some(json!({"using": "css selector", "value": "#state-file"})),
    );
    let id = input
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    let state = dir.join("half/state.safetensors");
    b.call(
        "POST",
        &format!("element/{id}/value"),
        Some(json!({"text": state.to_str().unwrap()})),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while b
        .exec("return document.getElementById('state-note').textContent;")
        .as_str()
        .is_none_or(|s| s.is_empty())
    {
        assert!(Instant::now() < deadline, "the state was not read");
        std::thread::sleep(Duration::from_millis(100));
    }
    let note = b.exec("return document.getElementById('state-note').textContent;");
    assert!(note.as_str().unwrap().contains("settings taken"), "{note}");
    b.exec("document.getElementById('start').click(); return 0;");
    let (title, r) = b.outcome(Duration::from_secs(600));
    assert_eq!(title, "selfish: error", "{r}");
    let err = r["error"].as_str().unwrap();
    assert!(err.contains("lost") && !err.contains('\n'), "{err}");
    assert_eq!(r["start_step"], 8);
    let log = r["log"].as_array().unwrap();
    assert!(log.len() >= 12, "{r}");
    let worst = max_loss_diff(&log[..12], &whole[8..20]);
    eprintln!("resumed in the page at step 8: max relative loss difference {worst:.2e}; lost device: {err}");
    assert!(worst <= 1e-4, "the resumed run differs by {worst:e}");

    // The page's last checkpoint is downloadable and continues natively.
    let kept = selfish::tensorfile::parse(&b.download("dl-state"), "state").unwrap();
    assert_eq!(kept.meta_usize("step").unwrap(), 16);
    let m = selfish::tensorfile::parse(&b.download("dl-model"), "model").unwrap();
    assert_eq!(m.meta_usize("step").unwrap(), 16);
    let again = dir.join("again");
    std::fs::create_dir_all(&again).unwrap();
    selfish::tensorfile::save(&again.join("state.safetensors"), &kept).unwrap();
    selfish::tensorfile::save(&again.join("model.safetensors"), &m).unwrap();
    let rest = native_run(RUN, &again, &["--resume"]);
    let worst = max_loss_diff(&rest, &whole[16..]);
    assert!(
        worst <= 1e-4,
        "the native resume of the page's state differs by {worst:e}"
    );
}

/// Stop finishes the current step and keeps its checkpoint: the page evaluates what it has,
/// and the downloaded state continues natively exactly where the page stopped.
#[test]
fn browser_stop_keeps_the_step_and_resumes_natively() {
    let Some((_lock, _server, url, b)) = page("stop") else {
        return;
    };
    // Long enough that Stop lands in the middle (SwiftShader trains the tiny model at a
    // few steps per second).
    let run: Vec<(&str, &str)> = RUN
        .iter()
        .map(|&(k, v)| if k == "steps" { (k, "200") } else { (k, v) })
        .collect();
    b.goto(&format!("{url}?autorun=1&{}", query(&run)));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let at = b.exec("return document.getElementById('step').textContent;");
        let step: u64 = at
            .as_str()
            .and_then(|s| s.split(" / ").next()?.trim().parse().ok())
            .unwrap_or(0);
        if step >= 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "training never reached step 6 ({at})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.exec("document.getElementById('stop').click(); return 0;");
    let (title, r) = b.outcome(Duration::from_secs(300));
    assert_eq!(title, "selfish: done", "{r}");
    assert_eq!(r["interrupted"], true, "{r}");
    let stopped = r["step"].as_u64().unwrap();
    assert!((6..200).contains(&stopped), "stopped at {stopped}");
    assert_eq!(r["log"].as_array().unwrap().len() as u64, stopped);
    assert_eq!(r["evaluation"].as_array().unwrap().len(), 2, "{r}");

    let state = selfish::tensorfile::parse(&b.download("dl-state"), "state").unwrap();
    assert_eq!(state.meta_usize("step").unwrap() as u64, stopped);
    let dir = common::tempdir("web-stop");
    let whole = native_run(&run, &dir.join("whole"), &[]);
    let rest = dir.join("rest");
    std::fs::create_dir_all(&rest).unwrap();
    selfish::tensorfile::save(&rest.join("state.safetensors"), &state).unwrap();
    let model = selfish::tensorfile::parse(&b.download("dl-model"), "model").unwrap();
    selfish::tensorfile::save(&rest.join("model.safetensors"), &model).unwrap();
    let resumed = native_run(&run, &rest, &["--resume"]);
    let n = stopped as usize;
    let worst = max_loss_diff(r["log"].as_array().unwrap(), &whole[..n])
        .max(max_loss_diff(&resumed, &whole[n..]));
    eprintln!("stopped in the page at step {stopped}; page then native resume against one native run: max relative loss difference {worst:.2e}");
    assert!(worst <= 1e-4, "stop and resume differ by {worst:e}");
}

/// A browser without WebGPU gets the one-line message that says what to use instead, and
/// no Start button to press.
#[test]
fn browser_without_webgpu_says_what_to_do() {
    let Some((_lock, _server, url, b)) = page("no-webgpu") else {
        return;
    };
    // Chromium's DevTools protocol through chromedriver: hide navigator.gpu from the page.
    b.call(
        "POST",
        "goog/cdp/execute",
        Some(
            json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source":
            "Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined });"}}),
        ),
    );
    b.goto(&format!("{url}?{}", query(RUN)));
    let (title, r) = b.outcome(Duration::from_secs(60));
    assert_eq!(title, "selfish: error", "{r}");
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains("no WebGPU") && err.contains("Chrome") && !err.contains('\n'),
        "{err}"
    );
    let shown = b.exec("return document.getElementById('message').textContent;");
    assert_eq!(shown.as_str(), Some(err));
    let start = b.exec("return document.getElementById('start').disabled;");
    assert_eq!(start, true, "Start stays disabled without a GPU");
}

/// `docs/web.png`: the page after a short run, as a person sees it. Run by hand:
/// `cargo test --test web -- --ignored screenshot`.
#[test]
#[ignore]
fn screenshot() {
    let Some((_lock, _server, url, b)) = page("shot") else {
        return;
    };
    b.goto(&format!(
        "{url}?autorun=1&config=tiny&steps=300&eval-interval=25&log-interval=5&loss=margin:1"
    ));
    let (title, r) = b.outcome(Duration::from_secs(1800));
    assert_eq!(title, "selfish: done", "{r}");
    b.exec("document.getElementById('run-json').open = false; window.scrollTo(0, 0); return 0;");
    let h = b.exec("return document.documentElement.scrollHeight;");
    b.call(
        "POST",
        "window/rect",
        Some(json!({"width": 1200, "height": h.as_u64().unwrap() + 140})),
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(Path::new(REPO).join("docs/web.png"), b.screenshot()).unwrap();
}

/// Tokens/s of a short run in the page beside the same run natively (BENCHMARKS.md):
/// `cargo test --release --test web -- --ignored bench --nocapture`. Each figure is the
/// logged rate of the last 20 steps, measured the same way on both sides. `SELFISH_BENCH`
/// names the configs (default tiny: the paper's model takes a quarter of an hour a side on
/// SwiftShader with two cores).
#[test]
#[ignore]
fn bench() {
    let Some((_lock, _server, url, b)) = page("bench") else {
        return;
    };
    let dir = common::tempdir("web-bench");
    let configs = std::env::var("SELFISH_BENCH").unwrap_or_else(|_| "tiny".into());
    for config in configs.split(',') {
        let run = [
            ("chars", "30000"),
            ("config", config),
            ("steps", "40"),
            ("warmup", "10"),
            ("log-interval", "20"),
            ("eval-interval", "0"),
            ("eval-batches", "1"),
        ];
        b.goto(&format!("{url}?autorun=1&{}", query(&run)));
        let (title, r) = b.outcome(Duration::from_secs(1800));
        assert_eq!(title, "selfish: done", "{r}");
        let last = |log: &[Value]| log.last().unwrap()["tokens_per_s"].as_f64().unwrap();
        let page = last(r["log"].as_array().unwrap());
        let mut line = format!("{config}: page {page:.0} tokens/s ({})", r["gpu"]);
        for (backend, icd) in [
            ("cpu", None),
            ("vulkan", None),
            ("vulkan", Some("/usr/lib/chromium/vk_swiftshader_icd.json")),
        ] {
            let out = dir.join(format!("{config}-{backend}-{}", icd.is_some()));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfish"));
            cmd.args([
                "train",
                "--backend",
                backend,
                "--out",
                out.to_str().unwrap(),
            ]);
            cmd.args(["--data", corpus(&run, &dir).to_str().unwrap()]);
            for (k, v) in run.iter().filter(|(k, _)| *k != "chars") {
                cmd.args([format!("--{k}"), v.to_string()]);
            }
            if let Some(icd) = icd.filter(|p| Path::new(p).is_file()) {
                cmd.env("VK_ICD_FILENAMES", icd);
            } else if icd.is_some() {
                continue;
            }
            let ok = cmd.output().unwrap().status.success();
            let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
            let log: Vec<Value> = log
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let name = if icd.is_some() {
                "native SwiftShader Vulkan"
            } else {
                backend
            };
            match ok && !log.is_empty() {
                true => line.push_str(&format!(", {name} {:.0}", last(&log))),
                false => line.push_str(&format!(", {name} failed")),
            }
        }
        eprintln!("{line}");
    }
}
