//! `tcptrace report`: a real capture of known traffic, made into the HTML
//! page, read back as a browser renders it (headless Chromium's DOM) and
//! checked against the capture itself (`tcptrace -r --all --json`, `hist
//! -r --json`) and against the traffic made. A screenshot of the page is
//! kept in target/report-test/report.png.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::harness::{self, Netns, Tracer, TRACER};

/// Connections closed by the client first: each ends in TIME_WAIT
/// (client) after a brief CLOSE_WAIT (server).
const TIME_WAITS: usize = 5;
/// Connections whose server never closes while the capture runs: held in
/// CLOSE_WAIT (their clients wait in FIN_WAIT2).
const CLOSE_WAITS: usize = 3;

const CHARTS: [&str; 12] = [
    "chart-transitions",
    "chart-populations",
    "chart-dwell-handshake",
    "chart-dwell-established",
    "chart-dwell-close_wait",
    "chart-dwell-fin_wait2",
    "chart-dwell-last_ack",
    "chart-dwell-time_wait",
    "chart-dwell-lifetime",
    "chart-top-time-wait",
    "chart-top-close-wait",
    "chart-losses",
];

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/report-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// A peer with a name of the test's choosing, as `tcptrace-peer` takes it.
fn peer(netns: &Netns, name: &str, args: &[&str]) -> std::process::Child {
    netns
        .command(harness::peer())
        .args(["--name", name])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting tcptrace-peer")
}

/// The port a server peer says it listens on.
fn listening_port(child: &mut std::process::Child) -> u16 {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected {line:?}"))
        .parse()
        .unwrap()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// Headless Chromium (installed by `cargo xtask test`).
fn chromium(args: &[&str], profile: &Path) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "120",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    match cmd.output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => panic!(
            "chromium {args:?} failed ({}); `cargo xtask test` installs Debian's chromium: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("chromium: {e}"),
    }
}

/// The attributes of every `<name ...>` start tag in `dom`, in order
/// (quote-aware; entities in values decoded).
fn tags(dom: &str, name: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{name} ");
    let mut all = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        let mut attrs = HashMap::new();
        let mut s = &rest[at + open.len()..];
        loop {
            s = s.trim_start();
            if s.starts_with('>') || s.starts_with("/>") || s.is_empty() {
                break;
            }
            let end = s.find(['=', ' ', '>']).unwrap_or(s.len());
            let key = s[..end].to_string();
            s = &s[end..];
            if let Some(after) = s.strip_prefix("=\"") {
                let close = after.find('"').expect("a closing quote");
                attrs.insert(key, unescape(&after[..close]));
                s = &after[close + 1..];
            } else {
                attrs.insert(key, String::new());
            }
        }
        all.push(attrs);
        rest = s;
    }
    all
}

fn unescape(s: &str) -> String {
    s.replace("&gt;", ">")
        .replace("&lt;", "<")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The one tag with `attr` = `value`.
fn tag_with<'a>(
    all: &'a [HashMap<String, String>],
    attr: &str,
    value: &str,
) -> &'a HashMap<String, String> {
    let found: Vec<_> = all
        .iter()
        .filter(|t| t.get(attr).is_some_and(|v| v == value))
        .collect();
    assert_eq!(found.len(), 1, "one tag with {attr}={value:?} in {all:#?}");
    found[0]
}

fn number(tag: &HashMap<String, String>, attr: &str) -> i64 {
    tag.get(attr)
        .unwrap_or_else(|| panic!("no {attr} in {tag:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{attr} in {tag:?}: {e}"))
}

/// The rows of the table `id` (the `<tr>` tags between its start and end).
fn table_rows(dom: &str, id: &str) -> Vec<HashMap<String, String>> {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id}"));
    let end = start + dom[start..].find("</table>").unwrap();
    tags(&dom[start..end], "tr")
        .into_iter()
        .filter(|r| r.contains_key("data-count"))
        .collect()
}

#[test]
fn a_capture_as_a_page() {
    let netns = Netns::new();
    let dir = artifacts();
    let capture = dir.join("capture.tcpt");
    let page = dir.join("report.html");
    let png = dir.join("report.png");
    for f in [&capture, &page, &png] {
        let _ = std::fs::remove_file(f);
    }
    let capture_arg = capture.to_str().unwrap();
    let (mut recorder, notify) = Tracer::spawn(
        &netns,
        &["record", "-w", capture_arg, "--json", "--netns", "self"],
    );
    harness::wait_ready(&notify, &mut recorder).unwrap_or_else(|why| panic!("record: {why}"));

    // Known traffic: TIME_WAITS connections the client closes first (the
    // server closes at once after: a brief CLOSE_WAIT), then CLOSE_WAITS
    // connections a server holds open past the capture's end.
    let mut tw_server = peer(
        &netns,
        "tw-server",
        &[
            "server",
            "--mode",
            "close-second",
            "--connections",
            &TIME_WAITS.to_string(),
        ],
    );
    let tw_port = listening_port(&mut tw_server);
    let tw_client = peer(
        &netns,
        "tw-client",
        &[
            "client",
            "--connect",
            &format!("127.0.0.1:{tw_port}"),
            "--mode",
            "close-first",
            "--hold-ms",
            "20",
            "--connections",
            &TIME_WAITS.to_string(),
        ],
    );
    let tw_client_pid = tw_client.id();
    assert!(tw_client.wait_with_output().unwrap().status.success());
    assert!(tw_server.wait().unwrap().success());
    let mut cw_server = peer(
        &netns,
        "cw-holder",
        &[
            "server",
            "--mode",
            "close-second",
            "--hold-ms",
            "600000",
            "--connections",
            &CLOSE_WAITS.to_string(),
        ],
    );
    let cw_port = listening_port(&mut cw_server);
    let cw_client = peer(
        &netns,
        "cw-client",
        &[
            "client",
            "--connect",
            &format!("127.0.0.1:{cw_port}"),
            "--mode",
            "close-first",
            "--connections",
            &CLOSE_WAITS.to_string(),
        ],
    );
    assert!(cw_client.wait_with_output().unwrap().status.success());
    // Let the last transitions land, and a second or two pass.
    thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) };
    let recorded = recorder.wait_with_output().unwrap();
    let _ = cw_server.kill();
    let _ = cw_server.wait();
    assert!(
        recorded.status.success(),
        "record exited with {}",
        recorded.status
    );
    let summary = json_lines(&recorded).pop().expect("record's summary");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["ring_reservation_failures"], 0);

    // The page, from the capture; nothing on stderr.
    let out = run(Command::new(TRACER)
        .args(["report", "-r", capture_arg, "-o"])
        .arg(&page));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    for banned in ["<script", "<link", "http://", "https://", "@import", "url("] {
        // The SVG namespace is the one URL (an identifier, never fetched).
        let n = html.matches(banned).count();
        let svg_ns = html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
        if banned == "http://" {
            assert_eq!(n, svg_ns, "only the SVG namespace names a URL");
        } else {
            assert_eq!(n, 0, "self-contained: no {banned}");
        }
    }

    // The same page on stdout with `-o -`.
    let stdout = run(Command::new(TRACER).args(["report", "-r", capture_arg, "-o", "-"]));
    assert!(
        stdout.stdout == html.as_bytes(),
        "-o - writes the same page"
    );

    // A capture cut short (killed mid-write): the page of what was
    // written, with one warning, and the page says so. The cut is inside
    // the last block (the summary), so that records remain to be read: a
    // capture with no record left is an error, not a page.
    let bytes = std::fs::read(&capture).unwrap();
    let mut last_block = 16;
    let mut at = 16;
    while at + 24 <= bytes.len() {
        last_block = at;
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 24 + len;
    }
    let cut = dir.join("cut.tcpt");
    std::fs::write(&cut, &bytes[..last_block + 12]).unwrap();
    let cut_page = dir.join("cut.html");
    let out = run(Command::new(TRACER)
        .arg("report")
        .arg("-r")
        .arg(&cut)
        .arg("-o")
        .arg(&cut_page));
    let warning = String::from_utf8_lossy(&out.stderr);
    assert_eq!(warning.lines().count(), 1, "{warning}");
    assert!(
        warning.starts_with(&format!("tcptrace: warning: {}: byte ", cut.display()))
            && warning.contains("cut short"),
        "{warning}"
    );
    let cut_html = std::fs::read_to_string(&cut_page).unwrap();
    assert!(cut_html.contains("id=\"damage\""));
    for f in [&cut, &cut_page] {
        let _ = std::fs::remove_file(f);
    }

    // What the capture holds, by the other readers.
    let all = json_lines(&run(Command::new(TRACER).args([
        "-r",
        capture_arg,
        "--all",
        "--json",
    ])));
    let mut per_kind: BTreeMap<String, i64> = BTreeMap::new();
    for t in all.iter().filter(|r| r["type"] == "transition") {
        *per_kind.entry(harness::transition_name(t)).or_default() += 1;
    }
    let transitions: i64 = per_kind.values().sum();
    assert_eq!(transitions, summary["transitions"].as_i64().unwrap());
    let histograms = json_lines(&run(Command::new(TRACER).args([
        "hist",
        "-r",
        capture_arg,
        "--json",
    ])));

    // The page as the browser has it.
    let profile = dir.join("chromium-profile");
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let dom = String::from_utf8(chromium(&["--dump-dom", &url], &profile).stdout).unwrap();
    for id in CHARTS {
        let at = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in the DOM"));
        let figure = &dom[at..at + dom[at..].find("</figure>").unwrap()];
        assert!(figure.contains("<svg"), "#{id} has no <svg>");
    }
    let body = &tags(&dom, "body")[0];
    assert_eq!(number(body, "data-total-transitions"), transitions);
    let figures = tags(&dom, "figure");
    let chart = tag_with(&figures, "id", "chart-transitions");
    assert_eq!(number(chart, "data-total-transitions"), transitions);
    assert_eq!(number(chart, "data-kinds"), per_kind.len() as i64);

    // Transitions per kind: as many as `-r --all` prints.
    let kinds = table_rows(&dom, "transition-kinds");
    let shown: BTreeMap<String, i64> = kinds
        .iter()
        .map(|r| (r["data-kind"].clone(), number(r, "data-count")))
        .collect();
    assert_eq!(shown, per_kind);
    assert_eq!(shown["FIN_WAIT2->TIME_WAIT"], TIME_WAITS as i64);
    let close_waits = (TIME_WAITS + CLOSE_WAITS) as i64;
    assert_eq!(shown["ESTABLISHED->CLOSE_WAIT"], close_waits);

    // Populations: no baseline (the capture had a --netns filter), so
    // from 0; every TIME_WAIT still there (60 s), the held CLOSE_WAITs.
    let p = tag_with(&figures, "id", "chart-populations");
    assert_eq!(p["data-baseline-known"], "false");
    assert_eq!(number(p, "data-time-wait-entries"), TIME_WAITS as i64);
    assert_eq!(number(p, "data-time-wait-exits"), 0);
    assert_eq!(number(p, "data-time-wait-end"), TIME_WAITS as i64);
    assert_eq!(number(p, "data-close-wait-entries"), close_waits);
    assert_eq!(number(p, "data-close-wait-exits"), TIME_WAITS as i64);
    assert_eq!(number(p, "data-close-wait-end"), CLOSE_WAITS as i64);
    assert_eq!(number(p, "data-close-wait-peak"), CLOSE_WAITS as i64);
    assert!(dom.contains("Baseline unknown"));

    // Dwell times: the same histograms as `hist -r`.
    let dwell = table_rows(&dom, "dwell-summary");
    assert_eq!(dwell.len(), 7);
    for h in histograms.iter().filter(|r| r["type"] == "histogram") {
        let metric = h["metric"].as_str().unwrap();
        let row = tag_with(&dwell, "data-metric", metric);
        let fig = tag_with(&figures, "id", &format!("chart-dwell-{metric}"));
        for (attr, field) in [
            ("data-count", "count"),
            ("data-p50-ns", "p50_ns"),
            ("data-p90-ns", "p90_ns"),
            ("data-p99-ns", "p99_ns"),
            ("data-max-ns", "max_ns"),
        ] {
            let expected = h[field].as_i64().unwrap();
            assert_eq!(number(row, attr), expected, "{metric} {field}");
            assert_eq!(number(fig, attr), expected, "{metric} {field}");
        }
    }
    // The server closed each brief CLOSE_WAIT; the held ones never ended.
    assert_eq!(
        number(tag_with(&dwell, "data-metric", "close_wait"), "data-count"),
        TIME_WAITS as i64
    );

    // Who: the client behind every TIME_WAIT, the two servers behind
    // CLOSE_WAIT.
    let tw = table_rows(&dom, "top-time-wait-processes");
    let client = tag_with(&tw, "data-comm", "tw-client");
    assert_eq!(number(client, "data-count"), TIME_WAITS as i64);
    assert_eq!(number(client, "data-pid"), i64::from(tw_client_pid));
    assert_eq!(tw.len(), 1);
    let peers = table_rows(&dom, "top-time-wait-peers");
    let peer_row = tag_with(&peers, "data-key", &format!("127.0.0.1:{tw_port}"));
    assert_eq!(number(peer_row, "data-count"), TIME_WAITS as i64);
    let lports = table_rows(&dom, "top-time-wait-lports");
    assert_eq!(
        lports.iter().map(|r| number(r, "data-count")).sum::<i64>(),
        TIME_WAITS as i64
    );
    let cw = table_rows(&dom, "top-close-wait-processes");
    assert_eq!(
        number(tag_with(&cw, "data-comm", "cw-holder"), "data-count"),
        CLOSE_WAITS as i64
    );
    assert_eq!(
        number(tag_with(&cw, "data-comm", "tw-server"), "data-count"),
        TIME_WAITS as i64
    );
    let cw_lports = table_rows(&dom, "top-close-wait-lports");
    assert_eq!(
        number(
            tag_with(&cw_lports, "data-key", &cw_port.to_string()),
            "data-count"
        ),
        CLOSE_WAITS as i64
    );
    let top_tw = tag_with(&figures, "id", "chart-top-time-wait");
    assert_eq!(number(top_tw, "data-entries"), TIME_WAITS as i64);

    // Losses: none, as the recorder said.
    let losses = tag_with(&figures, "id", "chart-losses");
    assert_eq!(number(losses, "data-total-losses"), 0);
    assert_eq!(number(losses, "data-ring-reservation-failures"), 0);

    // The capture's metadata.
    let meta = table_rows_any(&dom, "metadata");
    let field = |name: &str| tag_with(&meta, "data-field", name)["data-value"].clone();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(field("hostname"), hostname.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(field("kernel_release"), kernel.trim());
    assert_eq!(field("tcptrace_version"), env!("CARGO_PKG_VERSION"));
    let records =
        summary["transitions"].as_i64().unwrap() + summary["connections"].as_i64().unwrap();
    assert_eq!(field("records"), records.to_string());
    assert_eq!(field("files"), "1");
    assert_eq!(
        field("bytes"),
        std::fs::metadata(&capture).unwrap().len().to_string()
    );
    assert!(field("command_line").contains("record -w"));
    assert!(
        field("filters").starts_with("netns="),
        "{}",
        field("filters")
    );
    assert!(field("hooks").contains("inet_sock_set_state"));
    assert!(field("ended").starts_with("properly"));

    // A picture of it, kept as the test's artifact.
    chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,4000",
            "--hide-scrollbars",
            &url,
        ],
        &profile,
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 50_000, "{} is {size} bytes", png.display());
    let _ = std::fs::remove_dir_all(&profile);
}

/// Every `<tr>` of the table `id` that names a field.
fn table_rows_any(dom: &str, id: &str) -> Vec<HashMap<String, String>> {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id}"));
    let end = start + dom[start..].find("</table>").unwrap();
    tags(&dom[start..end], "tr")
}

#[test]
fn a_file_that_is_no_capture_is_refused_on_one_line() {
    let dir = artifacts();
    let bogus = dir.join("not-a-capture.tcpt");
    std::fs::write(&bogus, b"hello, not a capture at all").unwrap();
    let out = Command::new(TRACER)
        .args(["report", "-r"])
        .arg(&bogus)
        .args(["-o", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "tcptrace: {}: byte 0: not a tcptrace capture",
            bogus.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&bogus);
    // No file, or no output: a usage error, on one line.
    for args in [&["report", "-o", "x.html"][..], &["report", "-r", "x.tcpt"]] {
        let out = Command::new(TRACER).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    }
}
