//! The commands: arguments as kubectl takes them, and each command's run.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use macp_auth_operator::crd::{
    EMERGENCY_ROTATE_ANNOTATION, EMERGENCY_SCOPE_ANNOTATION, EMERGENCY_SCOPE_POD,
    EMERGENCY_SCOPE_SECRET, MacpAuth, ROTATE_ANNOTATION, RotationPhase,
};
use serde::Serialize;

use crate::audit::{self, Report, Unreadable};
use crate::client::{Fetched, Kube};
use crate::error::{Error, Result};
use crate::rotate::{self, Progress};
use crate::status::{self, StatusView};
use crate::{fmt, history, steps};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-macp",
    bin_name = "kubectl macp",
    version,
    about = "MacpAuth status with ETA, rotations, their history and plan, and the suspect-key audit",
    after_help = "Exit codes: 0 success; 1 error (no cluster, no such MacpAuth, API error); 2 bad arguments; \
                  3 the rotation ended RolledBack, Failed or Superseded; 4 --timeout passed; \
                  5 the audit may be incomplete. See docs/kubectl-macp.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// `--scope` of an emergency: what may have leaked.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Pod,
    Secret,
}

impl Scope {
    fn annotation_value(self) -> &'static str {
        match self {
            Scope::Pod => EMERGENCY_SCOPE_POD,
            Scope::Secret => EMERGENCY_SCOPE_SECRET,
        }
    }
}

/// `-o`: the default is text for people.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Text with more columns.
    Wide,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Phase, keys and their roles, what each pod serves, the next rotation, and the ETA of a rotation in flight.
    Status {
        /// The MacpAuth (default: every one in the namespace).
        name: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Requests a rotation with a fresh request id, and prints it; `--wait` follows it to its end.
    Rotate {
        name: String,
        /// An emergency rotation for this incident: every current key becomes suspect and is withdrawn.
        #[arg(long, value_name = "INCIDENT")]
        emergency: Option<String>,
        /// What may have leaked (`macp.io/emergency-scope`, set in the same write): `pod` (a pod, process, environment or log: the propagated standby replaces the suspects, no verification fails) or `secret` (the Secret, an etcd backup or an RBAC grant: the standby is a suspect too and a fresh key is generated). Unset: the annotation stays as it is (none means `pod`).
        #[arg(long, value_enum, requires = "emergency")]
        scope: Option<Scope>,
        /// Follows the rotation until it ends; exits 0 only on Succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 2h); default: the plan's latest end plus two minutes.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// The rotations the status records: trigger, request id, old and new kid, outcome, start, duration.
    History {
        name: String,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// A dry run of the next rotation: each step, its wait and where it comes from.
    Plan {
        name: String,
        /// The plan of an emergency rotation instead.
        #[arg(long)]
        emergency: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// Who minted with a kid, from the mint audit lines of every token-service pod.
    Audit {
        name: String,
        /// The suspect kid.
        #[arg(long)]
        kid: String,
        /// Only mints this recent (e.g. 30m, 2h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
}

/// The machine-readable forms of `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Structured {
    Json,
    Yaml,
}

fn print_structured<T: Serialize>(value: &T, output: Structured) -> Result<()> {
    let text = match output {
        Structured::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| Error::Output(e.to_string()))?,
        Structured::Yaml => {
            serde_yaml::to_string(value).map_err(|e| Error::Output(e.to_string()))?
        }
    };
    print(&text)
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::Output(e.to_string()))
}

fn structured(output: Option<Output>) -> Option<Structured> {
    match output? {
        Output::Json => Some(Structured::Json),
        Output::Yaml => Some(Structured::Yaml),
        Output::Wide => None,
    }
}

fn ns_name(m: &MacpAuth) -> (String, String) {
    (
        m.metadata.namespace.clone().unwrap_or_default(),
        m.metadata.name.clone().unwrap_or_default(),
    )
}

pub async fn run(cli: Cli) -> Result<()> {
    let kube = Kube::connect(cli.global.kubeconfig.clone(), cli.global.context.clone()).await?;
    let ns = cli
        .global
        .namespace
        .clone()
        .unwrap_or_else(|| kube.default_namespace.clone());
    match cli.command {
        Command::Status {
            name,
            all_namespaces,
            output,
        } => status_cmd(&kube, &ns, name.as_deref(), all_namespaces, output).await,
        Command::Rotate {
            name,
            emergency,
            scope,
            wait,
            timeout,
        } => {
            let request = emergency.as_deref().map(|id| (id, scope));
            rotate_cmd(&kube, &ns, &name, request, wait, timeout).await
        }
        Command::History { name, output } => {
            let f = kube.get(&ns, &name).await?;
            let st = f.macpauth.status.clone().unwrap_or_default();
            match structured(output) {
                Some(o) => print_structured(&st.history, o),
                None => print(&history::render(
                    &st,
                    Utc::now(),
                    output == Some(Output::Wide),
                )),
            }
        }
        Command::Plan {
            name,
            emergency,
            output,
        } => plan_cmd(&kube, &ns, &name, emergency, output).await,
        Command::Audit {
            name,
            kid,
            since,
            output,
        } => audit_cmd(&kube, &ns, &name, &kid, since, output).await,
    }
}

async fn status_cmd(
    kube: &Kube,
    ns: &str,
    name: Option<&str>,
    all: bool,
    output: Option<Output>,
) -> Result<()> {
    if all && name.is_some() {
        return Err(Error::Usage(
            "a MacpAuth name cannot be given with -A".into(),
        ));
    }
    let fetched: Vec<Fetched> = match name {
        Some(n) => vec![kube.get(ns, n).await?],
        None => kube.list((!all).then_some(ns)).await?,
    };
    if fetched.is_empty() {
        let where_ = if all {
            "any namespace".to_string()
        } else {
            format!("namespace {ns}")
        };
        return print(&format!("No MacpAuth in {where_}.\n"));
    }
    let now = Utc::now();
    let mut views: Vec<StatusView> = Vec::new();
    for f in &fetched {
        let (ns, name) = ns_name(&f.macpauth);
        let pods = kube.pods(&ns, &name).await?;
        views.push(status::build(&f.macpauth, &f.raw_status, &pods, now));
    }
    match structured(output) {
        Some(o) if name.is_some() => print_structured(&views[0], o),
        Some(o) => print_structured(&serde_json::json!({"items": views}), o),
        None => {
            let text: Vec<String> = views
                .iter()
                .map(|v| status::render(v, now, output == Some(Output::Wide)))
                .collect();
            print(&text.join("\n"))
        }
    }
}

async fn plan_cmd(
    kube: &Kube,
    ns: &str,
    name: &str,
    emergency: bool,
    output: Option<Output>,
) -> Result<()> {
    let f = kube.get(ns, name).await?;
    let spec = &f.macpauth.spec;
    let st = f.macpauth.status.clone().unwrap_or_default();
    let now = Utc::now();
    let scope = f
        .macpauth
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EMERGENCY_SCOPE_ANNOTATION))
        .map(String::as_str);
    let kind = steps::Kind::requested(&st, emergency, scope);
    let plan = steps::plan(spec, &st, kind, now);
    let standby = steps::standby_taken(&st, emergency, scope);
    if let Some(o) = structured(output) {
        return print_structured(
            &serde_json::json!({
                "namespace": ns, "name": name, "emergency": emergency,
                "fromStandby": standby,
                "start": now, "steps": plan,
                "nextRotationTime": st.next_rotation_time,
            }),
            o,
        );
    }
    let what = match (emergency, standby) {
        (true, Some(kid)) => format!(
            "an emergency rotation (activating the propagated standby {kid}; with {EMERGENCY_SCOPE_ANNOTATION}=secret a fresh key instead)"
        ),
        (true, None) if steps::propagated_standby(&st).is_some() => format!(
            "an emergency rotation (a fresh key: {EMERGENCY_SCOPE_ANNOTATION}={} is set, so the standby is a suspect too)",
            scope.unwrap_or_default()
        ),
        (true, None) => "an emergency rotation (a fresh key)".to_string(),
        (false, Some(kid)) => format!(
            "a routine rotation (activating the propagated standby {kid}: no publishing, no cache wait)"
        ),
        (false, None) => format!(
            "a routine rotation (prepublish {})",
            if spec.rotation.prepublish {
                "on"
            } else {
                "off"
            }
        ),
    };
    let mut out = format!(
        "Plan of {what} of MacpAuth {ns}/{name}, if requested now ({}):\n",
        fmt::instant(now)
    );
    out.push_str(&status::steps_table(&plan, now, "  "));
    let active = st.active_kid.as_deref().unwrap_or("the active key");
    if let Some(a) = steps::new_key_signs(&plan) {
        out.push_str(&format!(
            "The new key signs from {} at the earliest, {} at the latest.\n",
            fmt::instant_rel(a.earliest_end, now),
            fmt::instant(a.latest_end)
        ));
    }
    if let Some(r) = steps::old_key_retires(&plan) {
        let what = if emergency {
            "is withdrawn from every pod"
        } else {
            "retires (leaves every pod)"
        };
        out.push_str(&format!(
            "{active} {what} {} at the earliest, {} at the latest.\n",
            fmt::instant_rel(r.earliest_end, now),
            fmt::instant(r.latest_end)
        ));
    }
    if let Some(rot) = st
        .rotation
        .as_ref()
        .filter(|r| r.phase != RotationPhase::Idle)
    {
        out.push_str(&format!(
            "Note: a rotation is in flight ({:?}); {}.\n",
            rot.phase,
            if emergency {
                "an emergency preempts it"
            } else {
                "a routine request waits for its end (kubectl macp status)"
            }
        ));
    }
    if spec.rotation.paused && !emergency {
        out.push_str(
            "Note: spec.rotation.paused is true: a routine request waits until it is unpaused.\n",
        );
    }
    if !emergency && let Some(next) = st.next_rotation_time {
        let sched = steps::plan(spec, &st, steps::Kind::requested(&st, false, None), next);
        if let (Some(a), Some(r)) = (steps::new_key_signs(&sched), steps::old_key_retires(&sched)) {
            out.push_str(&format!(
                "The next scheduled rotation starts {}: its new key signs from {}, {active} retires from {}.\n",
                fmt::instant_rel(next, now),
                fmt::instant(a.earliest_end),
                fmt::instant(r.earliest_end)
            ));
        }
    }
    print(&out)
}

async fn rotate_cmd(
    kube: &Kube,
    ns: &str,
    name: &str,
    request: Option<(&str, Option<Scope>)>,
    wait: bool,
    timeout: Option<Duration>,
) -> Result<()> {
    let emergency = request.map(|(id, _)| id);
    if let Some(i) = emergency {
        rotate::check_incident(i).map_err(Error::Usage)?;
    }
    // Read first: a missing MacpAuth is named before anything is written.
    let f = kube.get(ns, name).await?;
    let now = Utc::now();
    let id = rotate::request_id(emergency, now, rand::random());
    let annotation = if emergency.is_some() {
        EMERGENCY_ROTATE_ANNOTATION
    } else {
        ROTATE_ANNOTATION
    };
    let mut annotations = vec![(annotation, id.as_str())];
    if let Some((_, Some(scope))) = request {
        annotations.insert(0, (EMERGENCY_SCOPE_ANNOTATION, scope.annotation_value()));
    }
    kube.annotate(ns, name, &annotations).await?;
    let written: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    print(&format!(
        "macpauth.macp.io/{name} annotated: {}\nrequest id: {id}\n",
        written.join(" ")
    ))?;
    if !wait {
        return Ok(());
    }
    let spec = f.macpauth.spec.clone();
    let current = f.macpauth.status.clone().unwrap_or_default();
    let timeout = timeout.unwrap_or_else(|| {
        // The longest route: a standby discarded before the operator takes
        // the request (the Secret changed, a Secret-scope emergency) means
        // publishing and a cache wait after all.
        let kind = steps::Kind {
            emergency: emergency.is_some(),
            from_standby: false,
        };
        let plan = steps::plan(&spec, &current, kind, now);
        let latest = plan
            .last()
            .map_or(0, |s| fmt::secs_between(now, s.latest_end));
        Duration::from_secs(latest.max(0) as u64 + 120)
    });
    print(&format!(
        "waiting up to {} for the rotation to end\n",
        humantime::format_duration(timeout)
    ))?;
    let tty = std::io::stdout().is_terminal();
    let deadline = Instant::now() + timeout;
    let mut last_phase: Option<RotationPhase> = None;
    let mut deferred_said = false;
    let mut state = "the operator had not acted on the request".to_string();
    loop {
        match kube.get(ns, name).await {
            Ok(f) => {
                let st = f.macpauth.status.unwrap_or_default();
                let now = Utc::now();
                match rotate::observe(&st, &id) {
                    Progress::Finished(rec) => {
                        if tty {
                            print("\r\x1b[2K")?;
                        }
                        let took = fmt::short(fmt::secs_between(rec.started_at, rec.finished_at));
                        let kids = format!(
                            "{} -> {}",
                            rec.old_kid.as_deref().unwrap_or("-"),
                            rec.new_kid.as_deref().unwrap_or("-")
                        );
                        return match rotate::failure(&rec) {
                            None => print(&format!(
                                "{} Succeeded: {kids} in {took}\n",
                                fmt::instant(now)
                            )),
                            Some(reason) => {
                                print(&format!(
                                    "{} {reason} ({kids}, {took})\n",
                                    fmt::instant(now)
                                ))?;
                                Err(Error::RotationFailed {
                                    namespace: ns.into(),
                                    name: name.into(),
                                    request: id,
                                    reason,
                                })
                            }
                        };
                    }
                    Progress::Running(rot) => {
                        state = format!("{:?}", rot.phase);
                        if last_phase != Some(rot.phase) {
                            last_phase = Some(rot.phase);
                            let line = rotate::phase_line(&spec, &st, now);
                            print(&if tty {
                                format!("\r\x1b[2K{line}\n")
                            } else {
                                format!("{line}\n")
                            })?;
                        }
                        if tty {
                            print(&format!(
                                "\r\x1b[2K{}",
                                rotate::progress_line(&spec, &st, now)
                            ))?;
                        }
                    }
                    Progress::Deferred => {
                        state = "deferred by the operator".into();
                        if !deferred_said {
                            deferred_said = true;
                            print(&format!(
                                "{} deferred: another rotation is in flight or spec.rotation.paused is set; the operator acts on the request afterwards\n",
                                fmt::instant(now)
                            ))?;
                        }
                    }
                    Progress::Waiting => {}
                }
            }
            // Transient API trouble must not end a long wait; a deleted MacpAuth does.
            Err(e @ Error::NotFound { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "reading the MacpAuth failed; retrying");
            }
        }
        if Instant::now() >= deadline {
            if tty {
                print("\n")?;
            }
            return Err(Error::Timeout {
                namespace: ns.into(),
                name: name.into(),
                request: id,
                after: humantime::format_duration(timeout).to_string(),
                state,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn audit_cmd(
    kube: &Kube,
    ns: &str,
    name: &str,
    kid: &str,
    since: Option<Duration>,
    output: Option<Output>,
) -> Result<()> {
    let f = kube.get(ns, name).await?;
    let now = Utc::now();
    let since = since
        .map(|d| now - chrono::Duration::milliseconds(d.as_millis().min(i64::MAX as u128) as i64));
    let audit_enabled = f.macpauth.spec.audit.as_ref().is_some_and(|a| a.enabled);
    let pods = kube.pods(ns, name).await?;
    let logs = futures::future::join_all(pods.iter().map(|p| kube.pod_log(ns, &p.name))).await;
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    let mut starts = Vec::new();
    let mut mints = Vec::new();
    for (p, log) in pods.iter().zip(logs) {
        match log {
            Ok(text) => {
                mints.extend(audit::mints_in_log(&p.name, &text, kid, since));
                read.push(p.name.clone());
                if let Some(s) = p.started {
                    starts.push(s);
                }
            }
            Err(reason) => unreadable.push(Unreadable {
                pod: p.name.clone(),
                reason,
            }),
        }
    }
    let current: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    let gone = kube.gone_pods(ns, name, &current).await;
    let st = f.macpauth.status.clone().unwrap_or_default();
    let uncovered =
        audit::signing_window(&st, kid).and_then(|w| audit::uncovered(w, since, &starts, now));
    let report = Report::new(
        ns,
        name,
        kid,
        since,
        audit_enabled,
        read,
        unreadable,
        gone,
        uncovered,
        mints,
    );
    match structured(output) {
        Some(o) => print_structured(&report, o)?,
        None => print(&report.render(output == Some(Output::Wide)))?,
    }
    if report.complete {
        return Ok(());
    }
    let mut why = Vec::new();
    if !report.audit_enabled {
        why.push("the audit log is off".to_string());
    }
    if !report.pods_unreadable.is_empty() {
        why.push(format!(
            "{} pods not readable",
            report.pods_unreadable.len()
        ));
    }
    if !report.pods_gone.is_empty() {
        why.push(format!("{} pods gone", report.pods_gone.len()));
    }
    if let Some(g) = &report.uncovered {
        why.push(format!(
            "no readable pod covers {} to {}",
            fmt::instant(g.from),
            fmt::instant(g.to)
        ));
    }
    Err(Error::Incomplete {
        namespace: ns.into(),
        name: name.into(),
        kid: kid.into(),
        why: why.join(", "),
    })
}
