//! `timeline`: draws a Mermaid gantt chart (which GitHub renders) of one
//! rotation from what an end-to-end run recorded (`MACP_E2E_RECORD=<dir>`,
//! tests/tests/e2e/mod.rs): which keys are published and which is active,
//! the rotation's phases (the verifier cache wait is `Propagating`), the
//! pods rolling, and the drain's token lifetimes. Prints Markdown on stdout.
//! `scripts/timeline` runs it; docs/timelines/README.md says how to record.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Draws a rotation's timeline (Mermaid gantt) from an e2e recording")]
struct Args {
    /// The recording: JSON lines written by the e2e harness with MACP_E2E_RECORD.
    recording: PathBuf,
}

/// The verifiers' clock leeway the drain adds to a key's longest token.
const LEEWAY_SECONDS: i64 = macp_auth_operator::validate::VERIFIER_LEEWAY_SECONDS;

/// One recorded line, parsed.
enum Line {
    Status(DateTime<Utc>, Value),
    Pods(DateTime<Utc>, Vec<Value>),
    Event(Value),
}

fn parse(text: &str) -> anyhow::Result<Vec<Line>> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(raw).with_context(|| format!("line {}", i + 1))?;
        if let Some(e) = v.get("event") {
            lines.push(Line::Event(e.clone()));
            continue;
        }
        let t = v["t"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .with_context(|| format!("line {}: no time `t`", i + 1))?
            .with_timezone(&Utc);
        if let Some(s) = v.get("status") {
            lines.push(Line::Status(t, s.clone()));
        } else if let Some(p) = v["pods"].as_array() {
            lines.push(Line::Pods(t, p.clone()));
        } else {
            bail!("line {}: neither status, pods nor event", i + 1);
        }
    }
    Ok(lines)
}

/// Milliseconds from the chart's origin (Mermaid's `dateFormat x`).
struct Clock(DateTime<Utc>);

impl Clock {
    fn ms(&self, t: DateTime<Utc>) -> i64 {
        (t - self.0).num_milliseconds()
    }
    fn at(&self, s: &str) -> Option<i64> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| self.ms(t.with_timezone(&Utc)))
    }
}

/// Intervals during which `key` held, from a series of (time, value) samples.
fn spans<K: Ord + Clone>(samples: &[(i64, Vec<K>)], end: i64) -> BTreeMap<K, Vec<(i64, i64)>> {
    let mut open: BTreeMap<K, i64> = BTreeMap::new();
    let mut out: BTreeMap<K, Vec<(i64, i64)>> = BTreeMap::new();
    for (t, keys) in samples {
        let closing: Vec<K> = open.keys().filter(|k| !keys.contains(k)).cloned().collect();
        for k in closing {
            if let Some(start) = open.remove(&k) {
                out.entry(k).or_default().push((start, *t));
            }
        }
        for k in keys {
            open.entry(k.clone()).or_insert(*t);
        }
    }
    for (k, start) in open {
        out.entry(k).or_default().push((start, end));
    }
    out
}

/// A kid as a chart label: Mermaid ends a task's name at `:`, and the kids'
/// random suffix is what tells two keys apart.
fn label(s: &str) -> String {
    s.replace([':', ';', '#'], " ")
}

fn task(out: &mut String, name: &str, tag: &str, start: i64, end: i64) {
    // A bar needs a width to be drawn at all.
    let end = end.max(start + 100);
    let tag = if tag.is_empty() {
        String::new()
    } else {
        format!("{tag}, ")
    };
    let _ = writeln!(out, "    {name} :{tag}{start}, {end}");
}

/// The chart's title, from the rotation the recording followed (its history
/// entry, or the rotation in flight at the end).
fn title(statuses: &[(DateTime<Utc>, &Value)]) -> String {
    let rotation = statuses.iter().rev().find_map(|(_, s)| {
        let h = &s["history"];
        let r = &s["rotation"];
        [h, r]
            .into_iter()
            .find(|x| x["trigger"].is_string())
            .map(|x| (x["trigger"].as_str().unwrap_or(""), x["requestId"].as_str()))
    });
    let Some((trigger, id)) = rotation else {
        return "A rotation".to_string();
    };
    let article = if trigger.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "An"
    } else {
        "A"
    };
    match id {
        Some(id) => format!("{article} {trigger} rotation, request {}", label(id)),
        None => format!("{article} {trigger} rotation"),
    }
}

fn render(source: &str, lines: &[Line]) -> anyhow::Result<String> {
    let statuses: Vec<(DateTime<Utc>, &Value)> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Status(t, s) => Some((*t, s)),
            _ => None,
        })
        .collect();
    let Some(first) = statuses.first() else {
        bail!("the recording has no status line");
    };
    let last_t = lines
        .iter()
        .filter_map(|l| match l {
            Line::Status(t, _) | Line::Pods(t, _) => Some(*t),
            Line::Event(_) => None,
        })
        .max()
        .unwrap_or(first.0);
    let clock = Clock(first.0);
    let end = clock.ms(last_t);

    let title = title(&statuses);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- drawn by scripts/timeline from {source}: do not edit (docs/timelines/README.md) -->\n\n\
         # {title}\n\n\
         Minutes and seconds from the first status recorded.\n\n\
         ```mermaid\ngantt\n    title {title}\n    dateFormat x\n    axisFormat %M:%S"
    );

    // The rotation's phases, from status.rotation.phase.
    let phases: Vec<(i64, Vec<String>)> = statuses
        .iter()
        .map(|(t, s)| {
            let phase = s["rotation"]["phase"]
                .as_str()
                .unwrap_or("Idle")
                .to_string();
            (clock.ms(*t), vec![phase])
        })
        .collect();
    let mut phase_bars: Vec<(i64, i64, String)> = spans(&phases, end)
        .into_iter()
        .flat_map(|(p, v)| v.into_iter().map(move |(a, b)| (a, b, p.clone())))
        .filter(|(_, _, p)| p != "Idle")
        .collect();
    phase_bars.sort();
    let _ = writeln!(out, "    section Phase");
    for (a, b, p) in &phase_bars {
        let name = match p.as_str() {
            "Propagating" => "Propagating (verifier caches)".to_string(),
            "Draining" => "Draining (old tokens expire)".to_string(),
            other => other.to_string(),
        };
        let tag = if p == "Propagating" || p == "Draining" {
            "active"
        } else {
            ""
        };
        task(&mut out, &name, tag, *a, *b);
    }

    // Keys: in the JWKS (the active key and status.publishedKids, the
    // verification-only ones) and active (status.activeKid).
    let published: Vec<(i64, Vec<String>)> = statuses
        .iter()
        .map(|(t, s)| {
            let kids = s["activeKid"]
                .as_str()
                .into_iter()
                .chain(
                    s["publishedKids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.as_str()),
                )
                .map(str::to_string)
                .collect();
            (clock.ms(*t), kids)
        })
        .collect();
    let active: Vec<(i64, Vec<String>)> = statuses
        .iter()
        .map(|(t, s)| {
            let kid = s["activeKid"].as_str().map(str::to_string);
            (clock.ms(*t), kid.into_iter().collect())
        })
        .collect();
    let published = spans(&published, end);
    let active = spans(&active, end);
    let mut kids: Vec<&String> = published.keys().chain(active.keys()).collect();
    kids.sort_by_key(|k| {
        published
            .get(*k)
            .and_then(|v| v.first())
            .or(active.get(*k).and_then(|v| v.first()))
            .map(|s| s.0)
    });
    kids.dedup();
    let _ = writeln!(out, "    section Keys in the Secret");
    for kid in &kids {
        for (a, b) in published.get(*kid).into_iter().flatten() {
            task(&mut out, &format!("{} published", label(kid)), "", *a, *b);
        }
        for (a, b) in active.get(*kid).into_iter().flatten() {
            task(&mut out, &format!("{} active", label(kid)), "crit", *a, *b);
        }
    }

    // Pods: from first seen to gone; the terminating stretch apart.
    let pod_samples: Vec<(i64, &Vec<Value>)> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Pods(t, p) => Some((clock.ms(*t), p)),
            _ => None,
        })
        .collect();
    let present: Vec<(i64, Vec<String>)> = pod_samples
        .iter()
        .map(|(t, ps)| {
            let names = ps
                .iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            (*t, names)
        })
        .collect();
    let terminating: Vec<(i64, Vec<String>)> = pod_samples
        .iter()
        .map(|(t, ps)| {
            let names = ps
                .iter()
                .filter(|p| p["terminating"] == true)
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            (*t, names)
        })
        .collect();
    let hashes: BTreeMap<String, String> = pod_samples
        .iter()
        .flat_map(|(_, ps)| ps.iter())
        .filter_map(|p| {
            let name = p["name"].as_str()?.to_string();
            let hash = p["keysetHash"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(6)
                .collect();
            Some((name, hash))
        })
        .collect();
    let present = spans(&present, end);
    let terminating = spans(&terminating, end);
    let mut pods: Vec<(&String, i64)> = present
        .iter()
        .filter_map(|(n, v)| v.first().map(|s| (n, s.0)))
        .collect();
    pods.sort_by_key(|(n, start)| (*start, (*n).clone()));
    if !pods.is_empty() {
        let _ = writeln!(out, "    section Pods (keyset)");
    }
    for (pod, _) in &pods {
        let hash = hashes.get(*pod).map(String::as_str).unwrap_or("");
        let stop: Vec<(i64, i64)> = terminating.get(*pod).cloned().unwrap_or_default();
        for (a, b) in present.get(*pod).into_iter().flatten() {
            let serving_end = stop.first().map_or(*b, |s| s.0.min(*b));
            task(
                &mut out,
                &format!("{} ({hash})", label(pod)),
                "",
                *a,
                serving_end,
            );
            if serving_end < *b {
                task(
                    &mut out,
                    &format!("{} terminating", label(pod)),
                    "done",
                    serving_end,
                    *b,
                );
            }
        }
    }

    // The drain: for each key that stopped signing, its longest token and
    // the verifiers' leeway, up to when it may leave the JWKS.
    let keys = statuses
        .iter()
        .rev()
        .flat_map(|(_, s)| s["keys"].as_array().into_iter().flatten())
        .filter(|k| k["stoppedSigningAt"].is_string());
    let mut drained: Vec<(String, i64, i64, i64)> = Vec::new();
    for k in keys {
        let kid = k["kid"].as_str().unwrap_or("").to_string();
        if drained.iter().any(|(d, ..)| *d == kid) {
            continue;
        }
        let stopped = k["stoppedSigningAt"].as_str().and_then(|s| clock.at(s));
        let retire = k["retireAfter"].as_str().and_then(|s| clock.at(s));
        let ttl = k["maxTokenTtlSeconds"].as_i64();
        if let (Some(stopped), Some(retire), Some(ttl)) = (stopped, retire, ttl) {
            drained.push((kid, stopped, retire, ttl));
        }
    }
    if !drained.is_empty() {
        let _ = writeln!(out, "    section Drain");
    }
    for (kid, stopped, retire, ttl) in &drained {
        let token_end = stopped + ttl * 1000;
        let leeway_end = token_end + LEEWAY_SECONDS * 1000;
        let kid = label(kid);
        task(
            &mut out,
            &format!("{kid} last token ({ttl} s)"),
            "",
            *stopped,
            token_end,
        );
        task(
            &mut out,
            &format!("leeway ({LEEWAY_SECONDS} s)"),
            "",
            token_end,
            leeway_end,
        );
        task(
            &mut out,
            &format!("{kid} kept published"),
            "active",
            *stopped,
            *retire,
        );
    }
    out.push_str("```\n");

    // The events, as a table under the chart.
    let events: Vec<&Value> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    if !events.is_empty() {
        out.push_str("\n| Time | Type | Reason | Message |\n|---|---|---|---|\n");
        for e in events {
            let at = e["at"].as_str().and_then(|s| clock.at(s));
            // Events from before the recording (the key's creation) are left out.
            let Some(at) = at.filter(|a| *a >= 0) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {:02}:{:06.3} | {} | {} | {} |",
                at / 60_000,
                (at % 60_000) as f64 / 1000.0,
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["note"].as_str().unwrap_or("").replace('|', "\\|")
            );
        }
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.recording)
        .with_context(|| format!("read {}", args.recording.display()))?;
    let lines = parse(&text).with_context(|| args.recording.display().to_string())?;
    let source = args
        .recording
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    print!("{}", render(&source, &lines)?);
    Ok(())
}
