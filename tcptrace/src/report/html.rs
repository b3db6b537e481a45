//! The page: one self-contained HTML file (inline CSS, inline SVG, no
//! script, nothing fetched). Every chart is a `<figure id="chart-...">`
//! whose key numbers are also in the DOM, as text and `data-` attributes,
//! so that a test (or a script) can read them.
use std::{fmt::Write, net::IpAddr};

use serde_json::Value;
use tcptrace_common::tcp_state::{CLOSE_WAIT, TIME_WAIT};

use super::{
    aggregate::{Aggregate, Owners, Population, Process, LOSS_COUNTERS},
    charts::{self, Points, Series},
    CaptureFacts,
};
use crate::{
    decode::comm_bytes,
    printer::human::{duration_text, endpoint_text},
    snapshot::{metric_name, Histogram},
    state,
};

/// `text` with the five HTML-special characters escaped (for text and
/// attribute values alike).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:0 16px 48px;color:#222;background:#fafafa}
h1{margin:24px 0 4px}h2{margin:36px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{margin:20px 0 6px}
.sub{color:#555;margin:4px 0 10px}
figure{margin:12px 0;padding:12px;background:#fff;border:1px solid #e2e2e2;border-radius:6px}
figcaption{font-weight:600;margin-bottom:4px}
figure svg{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#f6f6f6}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
.tables{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
nav a{margin-right:12px}
code{font-size:13px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
";

fn svg_or_note(chart: Result<String, String>) -> String {
    chart.unwrap_or_else(|e| format!("<p class=\"sub\">{}</p>", escape(&e)))
}

fn hex(c: plotters::style::RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn time_text(facts: &CaptureFacts, ktime: u64) -> String {
    let mut buf = Vec::new();
    facts.clock.write_rfc3339(&mut buf, ktime);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The whole page.
pub fn page(a: &Aggregate, facts: &CaptureFacts, top: usize) -> String {
    let m = &facts.tally.metadata;
    let mut out = String::with_capacity(256 << 10);
    let span_s = facts.to_ktime.saturating_sub(facts.from_ktime) as f64 / 1e9;
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>tcptrace report: {host}, {start}</title>\n<style>\n{STYLE}</style>\n</head>\n\
         <body data-total-transitions=\"{t}\" data-connections=\"{c}\" data-records=\"{r}\" \
         data-seconds=\"{s}\">\n<h1>tcptrace report</h1>\n\
         <p class=\"sub\">{host} &middot; {start} to {end} ({span:.1} s) &middot; {t} transitions, \
         {c} connection records</p>\n\
         <nav><a href=\"#transitions\">transitions</a><a href=\"#populations\">TIME_WAIT and \
         CLOSE_WAIT</a><a href=\"#dwell\">time in each state</a><a href=\"#owners\">who</a>\
         <a href=\"#losses\">losses</a><a href=\"#capture\">the capture</a></nav>\n",
        host = escape(&m.hostname),
        start = escape(&time_text(facts, facts.from_ktime)),
        end = escape(&time_text(facts, facts.to_ktime)),
        span = span_s,
        t = a.transitions,
        c = a.connections,
        r = facts.tally.records,
        s = a.seconds(),
    );
    if let Some(damage) = &facts.tally.damage {
        let _ = writeln!(
            out,
            "<p class=\"sub\" id=\"damage\"><strong>The capture is damaged or cut short:</strong> \
             {}; every record before it was read.</p>",
            escape(damage)
        );
    }
    transitions(&mut out, a, top);
    populations(&mut out, a, facts);
    dwell(&mut out, a);
    owners(&mut out, a, top);
    losses(&mut out, a);
    metadata(&mut out, a, facts);
    out.push_str("</body>\n</html>\n");
    out
}

fn kind_name((old, new): (u8, u8)) -> String {
    format!("{}->{}", state::name(old), state::name(new))
}

fn transitions(out: &mut String, a: &Aggregate, top: usize) {
    let group = charts::group_seconds(a.seconds());
    let totals = a.kind_totals();
    let mut series = Vec::new();
    let mut other = vec![0u32; a.seconds()];
    let mut other_total = 0;
    for (i, &(kind, total)) in totals.iter().enumerate() {
        let bins = a.bins_of(kind).unwrap_or(&[]);
        if i < top {
            series.push(Series {
                name: kind_name(kind),
                values: charts::mean_per_group(bins, group),
                color: charts::color(i),
            });
        } else {
            other_total += total;
            for (o, &n) in other.iter_mut().zip(bins) {
                *o += n;
            }
        }
    }
    if other_total > 0 {
        series.push(Series {
            name: "other".into(),
            values: charts::mean_per_group(&other, group),
            color: charts::OTHER_COLOR,
        });
    }
    let per = if group == 1 {
        "per second".to_string()
    } else {
        format!("per second (mean over {group} s)")
    };
    let _ = write!(
        out,
        "<section id=\"transitions\">\n<h2>Transitions per second</h2>\n\
         <p class=\"sub\">Every state transition the capture holds, by kind (OLD-&gt;NEW, as \
         <code>tcptrace --all</code> shows them), the {top} most frequent kinds and the rest as \
         \"other\"; {per}.</p>\n\
         <figure id=\"chart-transitions\" data-total-transitions=\"{total}\" data-kinds=\"{kinds}\" \
         data-seconds=\"{seconds}\" data-group-seconds=\"{group}\">\n\
         <figcaption>Transitions per second, by kind ({total} in all)</figcaption>\n{svg}\n",
        total = a.transitions,
        kinds = totals.len(),
        seconds = a.seconds(),
        svg = svg_or_note(charts::time_chart(
            "transitions per second",
            group,
            Points::Middle,
            &series,
            &[]
        )),
    );
    out.push_str(
        "<table id=\"transition-kinds\">\n<tr><th>transition</th><th class=\"n\">count</th>\
         <th class=\"n\">peak per second</th></tr>\n",
    );
    for (i, &(kind, total)) in totals.iter().enumerate() {
        let peak = a
            .bins_of(kind)
            .and_then(|b| b.iter().max().copied())
            .unwrap_or(0);
        let name = escape(&kind_name(kind));
        let swatch = if i < top {
            charts::color(i)
        } else {
            charts::OTHER_COLOR
        };
        let _ = writeln!(
            out,
            "<tr data-kind=\"{name}\" data-count=\"{total}\" data-peak=\"{peak}\"><td>\
             <span class=\"swatch\" style=\"background:{}\"></span>{name}</td>\
             <td class=\"n\">{total}</td><td class=\"n\">{peak}</td></tr>",
            hex(swatch)
        );
    }
    out.push_str("</table>\n</figure>\n</section>\n");
}

fn population_attrs(out: &mut String, prefix: &str, p: &Population, over: &[i64], start: i64) {
    let end = over.last().copied().unwrap_or(start);
    let peak = over.iter().copied().max().unwrap_or(start).max(start);
    let _ = write!(
        out,
        " data-{prefix}-entries=\"{}\" data-{prefix}-exits=\"{}\" data-{prefix}-start=\"{start}\" \
         data-{prefix}-end=\"{end}\" data-{prefix}-peak=\"{peak}\"",
        p.entries, p.exits
    );
}

fn populations(out: &mut String, a: &Aggregate, facts: &CaptureFacts) {
    let group = charts::group_seconds(a.seconds());
    let (tw0, cw0) = a.baseline.unwrap_or((0, 0));
    let tw = a.time_wait.over_time(tw0);
    let cw = a.close_wait.over_time(cw0);
    let tw_start = tw0 + a.time_wait.before;
    let cw_start = cw0 + a.close_wait.before;
    let subtitle = match a.baseline {
        Some(_) => format!(
            "Baseline known: the capture had no filters, so the populations start from the \
             sockets counted when it began ({tw0} in TIME_WAIT, {cw0} in CLOSE_WAIT, every \
             network namespace), then add each entry and subtract each exit."
        ),
        None => {
            let why = if facts.tally.metadata.sockets_at_start.is_object() {
                "the capture had filters, so the census taken when it began is not of the \
                 same sockets"
            } else {
                "the capture holds no census of the sockets at its start"
            };
            format!(
                "Baseline unknown ({why}): the lines start at 0 and show entries minus exits \
                 since the start, which can go below zero when sockets from before leave."
            )
        }
    };
    let series = [
        Series {
            name: "TIME_WAIT".into(),
            values: charts::last_per_group(&tw, group),
            color: charts::color(0),
        },
        Series {
            name: "CLOSE_WAIT".into(),
            values: charts::last_per_group(&cw, group),
            color: charts::color(3),
        },
    ];
    let _ = write!(
        out,
        "<section id=\"populations\">\n<h2>TIME_WAIT and CLOSE_WAIT over time</h2>\n\
         <p class=\"sub\" id=\"populations-baseline\">{}</p>\n\
         <figure id=\"chart-populations\" data-baseline-known=\"{}\"",
        escape(&subtitle),
        a.baseline.is_some()
    );
    population_attrs(out, "time-wait", &a.time_wait, &tw, tw_start);
    population_attrs(out, "close-wait", &a.close_wait, &cw, cw_start);
    let _ = write!(
        out,
        ">\n<figcaption>Sockets in TIME_WAIT and CLOSE_WAIT (at the end of each {})\
         </figcaption>\n{}\n",
        if group == 1 {
            "second".to_string()
        } else {
            format!("{group} s")
        },
        svg_or_note(charts::time_chart(
            "sockets",
            group,
            Points::End,
            &series,
            &[tw_start as f64, cw_start as f64]
        ))
    );
    out.push_str(
        "<table id=\"population-counts\">\n<tr><th>state</th><th class=\"n\">at the start</th>\
         <th class=\"n\">entries</th><th class=\"n\">exits</th><th class=\"n\">peak</th>\
         <th class=\"n\">at the end</th></tr>\n",
    );
    for (name, p, over, start) in [
        ("TIME_WAIT", &a.time_wait, &tw, tw_start),
        ("CLOSE_WAIT", &a.close_wait, &cw, cw_start),
    ] {
        let end = over.last().copied().unwrap_or(start);
        let peak = over.iter().copied().max().unwrap_or(start).max(start);
        let _ = writeln!(
            out,
            "<tr data-state=\"{name}\" data-entries=\"{e}\" data-exits=\"{x}\" data-end=\"{end}\">\
             <td>{name}</td><td class=\"n\">{start}</td><td class=\"n\">{e}</td>\
             <td class=\"n\">{x}</td><td class=\"n\">{peak}</td><td class=\"n\">{end}</td></tr>",
            e = p.entries,
            x = p.exits
        );
    }
    out.push_str("</table>\n</figure>\n</section>\n");
}

fn dwell(out: &mut String, a: &Aggregate) {
    let per_metric = a.dwell();
    out.push_str(
        "<section id=\"dwell\">\n<h2>Time in each state</h2>\n<p class=\"sub\">Log2 histograms \
         of the time connections spent per state, and of their whole lifetime, rebuilt from the \
         capture's records as <code>tcptrace hist -r</code> does: a duration counts when its \
         state ends, a lifetime when the connection's last socket is gone. Percentiles are \
         interpolated inside their power-of-two bucket.</p>\n\
         <table id=\"dwell-summary\">\n<tr><th>metric</th><th class=\"n\">count</th>\
         <th class=\"n\">p50</th><th class=\"n\">p90</th><th class=\"n\">p99</th>\
         <th class=\"n\">max</th></tr>\n",
    );
    let order = [
        tcptrace_common::metric::HANDSHAKE,
        tcptrace_common::metric::ESTABLISHED,
        tcptrace_common::metric::CLOSE_WAIT,
        tcptrace_common::metric::FIN_WAIT2,
        tcptrace_common::metric::LAST_ACK,
        tcptrace_common::metric::TIME_WAIT,
        tcptrace_common::metric::LIFETIME,
    ];
    let empty = Histogram::empty();
    let histogram = |m: u8| {
        per_metric
            .iter()
            .find(|(id, _)| *id == m)
            .map_or(&empty, |(_, h)| h)
    };
    let quantiles = |h: &Histogram| [0.5, 0.9, 0.99].map(|q| h.quantile(q));
    let text = |h: &Histogram, ns: u64| {
        if h.count == 0 {
            "-".to_string()
        } else {
            duration_text(ns)
        }
    };
    for m in order {
        let h = histogram(m);
        let [p50, p90, p99] = quantiles(h);
        let _ = writeln!(
            out,
            "<tr data-metric=\"{name}\" data-count=\"{count}\" data-p50-ns=\"{p50}\" \
             data-p90-ns=\"{p90}\" data-p99-ns=\"{p99}\" data-max-ns=\"{max}\"><td>{name}</td>\
             <td class=\"n\">{count}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            text(h, p50),
            text(h, p90),
            text(h, p99),
            text(h, h.max_ns),
            name = metric_name(m),
            count = h.count,
            max = h.max_ns,
        );
    }
    out.push_str("</table>\n<div class=\"grid\">\n");
    for m in order {
        let h = histogram(m);
        let [p50, p90, p99] = quantiles(h);
        let name = metric_name(m);
        let _ = writeln!(
            out,
            "<figure id=\"chart-dwell-{name}\" data-metric=\"{name}\" data-count=\"{count}\" \
             data-p50-ns=\"{p50}\" data-p90-ns=\"{p90}\" data-p99-ns=\"{p99}\" \
             data-max-ns=\"{max}\">\n<figcaption>{name}: count {count}, p50 {}, p90 {}, p99 {}, \
             max {}</figcaption>\n{}\n</figure>",
            text(h, p50),
            text(h, p90),
            text(h, p99),
            text(h, h.max_ns),
            svg_or_note(charts::buckets_chart(h)),
            count = h.count,
            max = h.max_ns,
        );
    }
    out.push_str("</div>\n</section>\n");
}

fn process_label((pid, comm): &Process) -> String {
    match pid {
        Some(pid) => format!("{}[{pid}]", String::from_utf8_lossy(comm_bytes(comm))),
        None => "(owner unknown)".into(),
    }
}

fn peer_label((addr, port): &(IpAddr, u16)) -> String {
    endpoint_text(*addr, *port)
}

/// One top-N table: `rows` of (label, extra attributes, count).
fn top_table(out: &mut String, id: &str, heading: &str, rows: &[(String, String, u64)], rest: u64) {
    let _ = write!(
        out,
        "<table id=\"{id}\">\n<tr><th>{heading}</th><th class=\"n\">entries</th></tr>\n"
    );
    for (label, attrs, n) in rows {
        let label = escape(label);
        let _ = writeln!(
            out,
            "<tr data-key=\"{label}\"{attrs} data-count=\"{n}\"><td>{label}</td>\
             <td class=\"n\">{n}</td></tr>"
        );
    }
    if rest > 0 {
        let _ = writeln!(
            out,
            "<tr data-key=\"other\" data-count=\"{rest}\"><td>other</td>\
             <td class=\"n\">{rest}</td></tr>"
        );
    }
    out.push_str("</table>\n");
}

fn owners(out: &mut String, a: &Aggregate, top: usize) {
    out.push_str(
        "<section id=\"owners\">\n<h2>Who is behind TIME_WAIT and CLOSE_WAIT</h2>\n\
         <p class=\"sub\">Entries into TIME_WAIT (FIN_WAIT2-&gt;TIME_WAIT and \
         CLOSING-&gt;TIME_WAIT of the timewait socket: the side that closed first) and into \
         CLOSE_WAIT (ESTABLISHED-&gt;CLOSE_WAIT: the peer closed first and this side has yet to \
         close), by owning process (comm[pid]), local port and peer (remote address:port).</p>\n",
    );
    for (state, slug, o, entries) in [
        (
            TIME_WAIT,
            "time-wait",
            &a.time_wait_owners,
            a.time_wait.entries,
        ),
        (
            CLOSE_WAIT,
            "close-wait",
            &a.close_wait_owners,
            a.close_wait.entries,
        ),
    ] {
        let name = state::name(state);
        let (processes, processes_rest) = Owners::top(&o.processes, top);
        let (lports, lports_rest) = Owners::top(&o.lports, top);
        let (peers, peers_rest) = Owners::top(&o.peers, top);
        let mut bars: Vec<(String, u64)> = processes
            .iter()
            .map(|(p, n)| (process_label(p), *n))
            .collect();
        if processes_rest > 0 {
            bars.push(("other".into(), processes_rest));
        }
        let _ = write!(
            out,
            "<figure id=\"chart-top-{slug}\" data-state=\"{name}\" data-entries=\"{entries}\">\n\
             <figcaption>Entries into {name} by process ({entries} in all)</figcaption>\n{}\n\
             <div class=\"tables\">\n",
            svg_or_note(charts::bars_chart(&format!("entries into {name}"), &bars))
        );
        let rows: Vec<(String, String, u64)> = processes
            .iter()
            .map(|(p, n)| {
                let attrs = match p.0 {
                    Some(pid) => format!(
                        " data-pid=\"{pid}\" data-comm=\"{}\"",
                        escape(&String::from_utf8_lossy(comm_bytes(&p.1)))
                    ),
                    None => String::new(),
                };
                (process_label(p), attrs, *n)
            })
            .collect();
        top_table(
            out,
            &format!("top-{slug}-processes"),
            "process",
            &rows,
            processes_rest,
        );
        let rows: Vec<(String, String, u64)> = lports
            .iter()
            .map(|(p, n)| (p.to_string(), String::new(), *n))
            .collect();
        top_table(
            out,
            &format!("top-{slug}-lports"),
            "local port",
            &rows,
            lports_rest,
        );
        let rows: Vec<(String, String, u64)> = peers
            .iter()
            .map(|(p, n)| (peer_label(p), String::new(), *n))
            .collect();
        top_table(out, &format!("top-{slug}-peers"), "peer", &rows, peers_rest);
        out.push_str("</div>\n</figure>\n");
    }
    out.push_str("</section>\n");
}

fn losses(out: &mut String, a: &Aggregate) {
    let group = charts::group_seconds(a.seconds());
    let series: Vec<Series> = LOSS_COUNTERS
        .iter()
        .enumerate()
        .map(|(i, name)| Series {
            name: (*name).into(),
            values: charts::mean_per_group(
                &a.losses[i].iter().map(|&n| n as f64).collect::<Vec<_>>(),
                group,
            ),
            color: charts::color([3, 1, 4, 5][i]),
        })
        .collect();
    let total: u64 = a.loss_totals.iter().sum();
    let _ = write!(
        out,
        "<section id=\"losses\">\n<h2>Losses over time</h2>\n<p class=\"sub\">What the capture \
         could not hold, per second, from its loss counters (written once a second): ring \
         reservation failures (the ring buffer was full), recursion misses (the kernel skipped \
         a probe run), records the writer could not write (the disk was too slow or full) and \
         TIME_WAIT entries lost. {}</p>\n<figure id=\"chart-losses\" data-total-losses=\"{total}\"",
        if total == 0 {
            "None here: every transition the probe saw is in the capture."
        } else {
            "Charts and tables above miss these."
        }
    );
    for (name, n) in LOSS_COUNTERS.iter().zip(a.loss_totals) {
        let _ = write!(out, " data-{}=\"{n}\"", name.replace('_', "-"));
    }
    let _ = write!(
        out,
        ">\n<figcaption>Losses per second ({total} in all)</figcaption>\n{}\n\
         <table id=\"loss-totals\">\n<tr><th>counter</th><th class=\"n\">total</th></tr>\n",
        svg_or_note(charts::time_chart(
            "lost per second",
            group,
            Points::Middle,
            &series,
            &[]
        ))
    );
    for (name, n) in LOSS_COUNTERS.iter().zip(a.loss_totals) {
        let _ = writeln!(
            out,
            "<tr data-counter=\"{name}\" data-count=\"{n}\"><td>{name}</td>\
             <td class=\"n\">{n}</td></tr>"
        );
    }
    out.push_str("</table>\n</figure>\n</section>\n");
}

fn metadata(out: &mut String, a: &Aggregate, facts: &CaptureFacts) {
    let m = &facts.tally.metadata;
    let json_text = |v: &Value| match v {
        Value::Null => "none".to_string(),
        Value::Object(o) => {
            let set: Vec<String> = o
                .iter()
                .filter(|(_, v)| !(v.is_null() || **v == Value::Bool(false)))
                .map(|(k, v)| match v {
                    Value::Bool(true) => k.clone(),
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            if set.is_empty() {
                "none".to_string()
            } else {
                set.join(", ")
            }
        }
        other => other.to_string(),
    };
    let summary = facts.tally.summary.as_ref();
    let rows: Vec<(&str, String)> = vec![
        ("tcptrace_version", m.tcptrace_version.clone()),
        ("kernel_release", m.kernel_release.clone()),
        ("hostname", m.hostname.clone()),
        ("boot_id", m.boot_id.clone()),
        ("start", time_text(facts, m.started_ktime_ns)),
        (
            "end",
            time_text(facts, facts.tally.last_ktime_ns.max(m.started_ktime_ns)),
        ),
        (
            "window",
            format!(
                "{} to {}",
                time_text(facts, facts.from_ktime),
                time_text(facts, facts.to_ktime)
            ),
        ),
        ("command_line", m.command_line.join(" ")),
        ("filters", json_text(&m.filters)),
        ("hooks", m.hooks.join(", ")),
        ("timewait_detection", m.timewait_detection.clone()),
        ("sockets_at_start", json_text(&m.sockets_at_start)),
        ("records", facts.tally.records.to_string()),
        ("transitions", a.transitions.to_string()),
        ("connections", a.connections.to_string()),
        ("records_outside_window", a.outside.to_string()),
        ("bad_records", facts.tally.bad_records.to_string()),
        (
            "records_unwritten",
            facts.tally.records_unwritten.to_string(),
        ),
        ("bytes", facts.bytes.to_string()),
        ("files", facts.files.len().to_string()),
        (
            "file_names",
            facts
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "ended",
            match (summary, &facts.tally.damage) {
                (_, Some(damage)) => format!("damaged or cut short: {damage}"),
                (Some(_), None) => "properly (with its summary)".into(),
                (None, None) => "without a summary (stopped before its end)".into(),
            },
        ),
    ];
    out.push_str("<section id=\"capture\">\n<h2>The capture</h2>\n<table id=\"metadata\">\n");
    for (field, value) in rows {
        let value = escape(&value);
        let _ = writeln!(
            out,
            "<tr data-field=\"{field}\" data-value=\"{value}\"><th>{}</th><td>{value}</td></tr>",
            field.replace('_', " ")
        );
    }
    out.push_str("</table>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_needs() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("FIN_WAIT2->TIME_WAIT"), "FIN_WAIT2-&gt;TIME_WAIT");
    }
}
