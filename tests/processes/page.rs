//! The live page at `/`, opened in a real browser (headless Chromium): every
//! path row and every matrix cell that `/metrics` has is on the page with
//! the same values. `KUBEPULSE_BLESS=1 cargo test --test processes page::` also
//! refreshes the screenshot in `docs/local-mode-page.png`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kubepulse::report::{self, exposition, format, page, snapshot::Window};
use kubepulse_testkit::process::Kubepulse;
use kubepulse_testkit::scrape;

/// Slow schedules: each cell changes rarely, so a scrape before and after
/// the browser's load agree most of the time and the comparison is exact.
const SLOW: &str = "\
probes:
  udp: {interval: 20s, timeout: 1s}
  tcp: {interval: 20s, timeout: 1s}
  icmp: {interval: 20s, timeout: 1s}
  tcp_connect: {interval: 20s, timeout: 1s}
  http: {interval: 20s, timeout: 2s}
";

/// UDP cells of 5 local agents: one per (agent, peer node, path).
const CELLS: usize = 17;

fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.exists(),
        "headless Chromium is needed (apt-get install chromium; .ci/run installs it)"
    );
    p
}

/// Runs headless Chromium on `url` with `action` (`--dump-dom` or
/// `--screenshot=FILE`); returns stdout.
fn browse(profile: &Path, action: &str, url: &str) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1500,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(action)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {action} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Text between `open` and `close` after `from`, and the index after it.
fn between<'a>(s: &'a str, from: usize, open: &str, close: &str) -> Option<(&'a str, usize)> {
    let a = s[from..].find(open)? + from + open.len();
    let b = s[a..].find(close)? + a;
    Some((&s[a..b], b + close.len()))
}

/// The rows of the table under heading `title`: first cell, all cells.
fn page_rows(dom: &str, title: &str) -> Vec<Vec<String>> {
    let Some(start) = dom.find(&format!("<h2>{}</h2>", page::escape(title))) else {
        return Vec::new();
    };
    let end = dom[start..]
        .find("</table>")
        .map_or(dom.len(), |e| e + start);
    let table = &dom[start..end];
    let mut rows = Vec::new();
    let mut at = 0;
    while let Some((row, next)) = between(table, at, "<tr data-row=", "</tr>") {
        let mut cells = Vec::new();
        let mut c = 0;
        while let Some((cell, n)) = between(row, c, "<td>", "</td>") {
            cells.push(unescape(cell));
            c = n;
        }
        rows.push(cells);
        at = next;
    }
    rows
}

/// A matrix cell's key: (path, source, peer node).
type CellKey = (String, String, String);

/// Matrix cells on the page: key → (loss, rtt) as shown.
fn page_cells(dom: &str) -> Vec<(CellKey, (String, String))> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((svg_head, next)) = between(dom, at, "<svg", ">") {
        let path = between(svg_head, 0, "data-path=\"", "\"")
            .map_or("", |x| x.0)
            .to_string();
        let svg_end = dom[next..].find("</svg>").map_or(dom.len(), |e| e + next);
        let svg = &dom[next..svg_end];
        let mut c = 0;
        while let Some((g, n)) = between(svg, c, "<g class=\"cell\"", ">") {
            let attr = |k: &str| {
                between(g, 0, &format!("{k}=\""), "\"").map_or(String::new(), |x| unescape(x.0))
            };
            out.push((
                (path.clone(), attr("data-source"), attr("data-peer")),
                (attr("data-loss"), attr("data-rtt")),
            ));
            c = n;
        }
        at = svg_end;
    }
    out
}

/// What the page must show, computed from one `/metrics` body.
fn expected(body: &str) -> report::Report {
    let snap = exposition::parse(body).expect("valid exposition");
    report::build(&Window::since_start(&snap), "expected")
}

#[test]
fn the_page_shows_every_row_and_cell_of_metrics_in_a_real_browser() {
    let mut cfg = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp");
    cfg.write_all(SLOW.as_bytes()).expect("write config");
    let cfg_path = cfg.path().to_str().expect("utf-8 path").to_string();
    let kp = Kubepulse::start(&["local", "--listen", "127.0.0.1:0", "-c", &cfg_path]);
    let url = format!("http://{}/", kp.metrics);
    let profile = tempfile::tempdir().expect("profile dir");

    // Every UDP stream has sent once (random phases within one interval).
    let (_, ok) = scrape::scrape_until(kp.metrics, Duration::from_secs(60), |sc| {
        let s = sc.select("kubepulse_probe_sent_total", &[("protocol", "udp")]);
        s.len() >= CELLS && s.iter().all(|s| s.value >= 1.0)
    });
    assert!(ok, "not every UDP stream sent within 60 s");

    // Scrape, load the page in the browser, scrape again: a row or cell that
    // is the same in both scrapes must be on the page exactly as computed.
    let titles: Vec<String> = format::tables(&expected(
        &scrape::http_get(kp.metrics, "/metrics").expect("GET").1,
    ))
    .into_iter()
    .filter(|t| !t.title.starts_with("Probed pairs"))
    .map(|t| t.title)
    .collect();
    assert!(titles.len() >= 2, "{titles:?}");
    let mut rows_left: Vec<(String, String)> = Vec::new();
    let mut cells_left: Vec<CellKey> = Vec::new();
    let mut first = true;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempts = 0;
    let mut last_dom = String::new();
    let mut mismatches: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        attempts += 1;
        mismatches.clear();
        let before = expected(&scrape::http_get(kp.metrics, "/metrics").expect("GET").1);
        let dom = browse(profile.path(), "--dump-dom", &url);
        let after = expected(&scrape::http_get(kp.metrics, "/metrics").expect("GET").1);
        let (tb, ta) = (format::tables(&before), format::tables(&after));
        if first {
            for t in &tb {
                if titles.contains(&t.title) {
                    rows_left.extend(t.rows.iter().map(|r| (t.title.clone(), r[0].clone())));
                }
            }
            cells_left = before
                .matrix
                .iter()
                .map(|c| (c.path.to_string(), c.source.clone(), c.peer_node.clone()))
                .collect();
            assert_eq!(cells_left.len(), CELLS, "cells in /metrics");
            assert_eq!(
                rows_left.len(),
                2 * 5,
                "5 path rows in 2 tables: {rows_left:?}"
            );
            first = false;
        }
        rows_left.retain(|(title, key)| {
            let find = |ts: &[format::Table]| {
                ts.iter()
                    .find(|t| &t.title == title)
                    .and_then(|t| t.rows.iter().find(|r| &r[0] == key).cloned())
            };
            let (b, a) = (find(&tb), find(&ta));
            if b.is_none() || b != a {
                return true; // changed meanwhile: try again
            }
            let on_page = page_rows(&dom, title)
                .into_iter()
                .find(|r| r.first() == Some(key));
            if on_page != b {
                // The page renders its own scrape of a moving window: a value
                // can step and step back between our two scrapes. A rendering
                // bug never matches, and fails at the deadline below.
                mismatches.push(format!(
                    "{title}: row {key}: page {on_page:?}, /metrics {b:?}"
                ));
                return true;
            }
            false
        });
        cells_left.retain(|key| {
            let find = |r: &report::Report| {
                r.matrix
                    .iter()
                    .find(|c| (c.path, &c.source, &c.peer_node) == (key.0.as_str(), &key.1, &key.2))
                    .map(|c| (format::pct(c.loss_ratio, false), format::ms(c.rtt_mean)))
            };
            let (b, a) = (find(&before), find(&after));
            if b.is_none() || b != a {
                return true;
            }
            let on_page = page_cells(&dom)
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|x| x.1);
            if on_page != b {
                mismatches.push(format!("cell {key:?}: page {on_page:?}, /metrics {b:?}"));
                return true;
            }
            false
        });
        last_dom = dom;
        if rows_left.is_empty() && cells_left.is_empty() {
            break;
        }
    }
    assert!(
        rows_left.is_empty() && cells_left.is_empty(),
        "after {attempts} attempts, never seen stable and matching: rows {rows_left:?} \
         cells {cells_left:?}; last mismatches: {mismatches:?}"
    );
    assert_eq!(
        page_cells(&last_dom).len(),
        CELLS,
        "no cell beyond the probed pairs"
    );
    assert!(!last_dom.contains("<script"), "no JavaScript");

    // A screenshot a person can look at.
    let shot = profile.path().join("page.png");
    browse(
        profile.path(),
        &format!("--screenshot={}", shot.display()),
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    if std::env::var("KUBEPULSE_BLESS").is_ok_and(|v| v == "1") {
        let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/local-mode-page.png");
        std::fs::write(&dest, &png).expect("write docs screenshot");
        println!("wrote {}", dest.display());
    }
}
