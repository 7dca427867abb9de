//! The live page at `/`: the report's tables and a node × node matrix per
//! path kind, drawn on the server as SVG. No JavaScript; the page reloads
//! itself.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::format::{ms, pct, tables, Table};
use super::model::{MatrixCell, Report};

/// Seconds between reloads of the page.
pub const REFRESH_SECONDS: u32 = 10;
/// Side of one matrix cell, px.
const CELL: usize = 64;
/// Room for row names, px.
const MARGIN: usize = 110;
/// Room for column names, px.
const TOP: usize = 24;

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn table_html(t: &Table, out: &mut String) {
    let _ = writeln!(out, "<h2>{}</h2>\n<table>\n<tr>", escape(&t.title));
    for h in &t.header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for r in &t.rows {
        let key = r.first().map(String::as_str).unwrap_or_default();
        let _ = write!(out, "<tr data-row=\"{}\">", escape(key));
        for c in r {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// Cell colour by loss: green none, amber below 1 %, red from 1 %.
fn colour(loss: Option<f64>) -> &'static str {
    match loss {
        None => "#d0d0d0",
        Some(l) if l <= 0.0 => "#7bc47f",
        Some(l) if l < 0.01 => "#f2c14e",
        Some(_) => "#e05d5d",
    }
}

/// One SVG matrix of the probed pairs of `path`: sources down, peer nodes
/// across; cells that were not probed stay empty.
fn matrix_svg(path: &str, cells: &[&MatrixCell], out: &mut String) {
    let rows: BTreeSet<&str> = cells.iter().map(|c| c.source.as_str()).collect();
    let cols: BTreeSet<&str> = cells.iter().map(|c| c.peer_node.as_str()).collect();
    let rows: Vec<&str> = rows.into_iter().collect();
    let cols: Vec<&str> = cols.into_iter().collect();
    let (w, h) = (MARGIN + CELL * cols.len(), TOP + CELL * rows.len());
    let _ = writeln!(
        out,
        "<figure><figcaption>{path}</figcaption>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         role=\"img\" aria-label=\"loss and mean RTT, {path}\" data-path=\"{path}\">"
    );
    for (j, c) in cols.iter().enumerate() {
        let x = MARGIN + CELL * j + CELL / 2;
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" class=\"col\">{}</text>",
            TOP - 8,
            escape(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + CELL * i;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"row\">{}</text>",
            MARGIN - 8,
            y + CELL / 2 + 4,
            escape(r)
        );
        for (j, col) in cols.iter().enumerate() {
            let Some(cell) = cells.iter().find(|c| c.source == *r && c.peer_node == *col) else {
                continue;
            };
            let x = MARGIN + CELL * j;
            let (loss, rtt) = (pct(cell.loss_ratio, false), ms(cell.rtt_mean));
            let _ = writeln!(
                out,
                "<g class=\"cell\" data-source=\"{}\" data-peer=\"{}\" data-loss=\"{loss}\" data-rtt=\"{rtt}\">\
                 <title>{} → {} over {path}: loss {loss} %, mean RTT {rtt} ms ({:.0} probes)</title>\
                 <rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{rtt}</text>\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"loss\">{loss}%</text></g>",
                escape(r),
                escape(col),
                escape(r),
                escape(col),
                cell.sent,
                CELL - 2,
                CELL - 2,
                colour(cell.loss_ratio),
                x + CELL / 2,
                y + CELL / 2 - 2,
                x + CELL / 2,
                y + CELL / 2 + 14,
            );
        }
    }
    out.push_str("</svg></figure>\n");
}

/// The whole page.
pub fn render(title: &str, r: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>{t}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin-bottom:1em}}\
         th,td{{border:1px solid #ccc;padding:3px 7px;text-align:right;font-variant-numeric:tabular-nums}}\
         td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}\
         svg text{{font-size:11px}}svg .loss{{font-size:10px;fill:#333}}\
         .matrix{{display:flex;flex-wrap:wrap;gap:28px}}figure{{margin:0}}\
         figcaption{{font-weight:600;margin-bottom:4px}}\
         </style></head><body>\n<h1>{t}</h1>\n\
         <p>Since start; reloads every {REFRESH_SECONDS} s. \
         <a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a> · \
         <a href=\"/readyz\">/readyz</a></p>\n",
        t = escape(title),
    );
    for t in tables(r) {
        if t.title.starts_with("Probed pairs") {
            continue;
        }
        table_html(&t, &mut out);
    }
    if !r.matrix.is_empty() {
        out.push_str("<h2>Matrix (UDP): mean RTT in ms and loss, probed pairs only</h2>\n");
        out.push_str("<div class=\"matrix\">\n");
        let paths: BTreeSet<&str> = r.matrix.iter().map(|c| c.path).collect();
        for p in paths {
            let cells: Vec<&MatrixCell> = r.matrix.iter().filter(|c| c.path == p).collect();
            matrix_svg(p, &cells, &mut out);
        }
        out.push_str("</div>\n");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_has_one_cell_per_probed_pair_and_escapes_names() {
        let cell = |s: &str, p: &str, loss| MatrixCell {
            source: s.into(),
            peer_node: p.into(),
            path: "pod_cross_node",
            sent: 10.0,
            loss_ratio: Some(loss),
            rtt_mean: Some(0.0003),
        };
        let r = Report {
            source: "t".into(),
            window_seconds: 0.0,
            paths: vec![],
            matrix: vec![cell("a<b", "n1", 0.0), cell("c", "n2", 0.5)],
            control_plane: None,
            reach: vec![],
            lifecycle: vec![],
        };
        let html = render("kubepulse <test>", &r);
        assert!(html.contains("<title>kubepulse &lt;test&gt;</title>"));
        assert_eq!(html.matches("<g class=\"cell\"").count(), 2, "{html}");
        assert!(html.contains(
            "data-source=\"a&lt;b\" data-peer=\"n1\" data-loss=\"0.0\" data-rtt=\"0.300\""
        ));
        assert!(html.contains("fill=\"#e05d5d\""), "50 % loss is red");
        assert!(!html.contains("<script"), "no JavaScript");
    }
}
