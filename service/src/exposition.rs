//! `/metrics` content negotiation: OpenMetrics for scrapers that ask for it
//! (Prometheus does), the classic Prometheus text format (0.0.4) for everyone
//! else: `curl`, older scrapers and `promtool check metrics`, which read
//! counter metadata by the sample name (`x_total`) where OpenMetrics names
//! the family (`x`).
//!
//! prometheus-client only encodes OpenMetrics, so the text format is derived
//! from that encoding. Pure: no I/O. Used by the token service and the operator.

/// Content type of the OpenMetrics encoding.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            // `q=0` means "not acceptable" (RFC 9110).
            let refused = params.any(|p| p.replace(' ', "") == "q=0");
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// The body and content type to answer a scrape with.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics)
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(&openmetrics))
    }
}

/// Rewrites an OpenMetrics exposition (as prometheus-client writes it) into
/// the Prometheus text format: counter metadata names the `_total` samples,
/// `unknown` becomes `untyped`, and `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = metadata(line, "# HELP ", &counters)
            .or_else(|| metadata(line, "# TYPE ", &counters))
            .map(|l| match l.strip_suffix(" unknown") {
                Some(name) => format!("{name} untyped"),
                None => l,
            });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A `# HELP`/`# TYPE` line with a counter family's name given its `_total`.
fn metadata(
    line: &str,
    prefix: &str,
    counters: &std::collections::HashSet<&str>,
) -> Option<String> {
    let rest = line.strip_prefix(prefix)?;
    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let name = if counters.contains(name) {
        format!("{name}_total")
    } else {
        name.to_string()
    };
    Some(format!("{prefix}{name} {tail}").trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP macp_auth_mints POST /tokens requests.\n\
# TYPE macp_auth_mints counter\n\
macp_auth_mints_total{outcome=\"issued\"} 2\n\
# HELP macp_auth_mint_duration_seconds Mint time.\n\
# TYPE macp_auth_mint_duration_seconds histogram\n\
# UNIT macp_auth_mint_duration_seconds seconds\n\
macp_auth_mint_duration_seconds_sum 0.5\n\
macp_auth_mint_duration_seconds_count 2\n\
macp_auth_mint_duration_seconds_bucket{le=\"+Inf\"} 2\n\
# HELP macp_auth_thing Something.\n\
# TYPE macp_auth_thing unknown\n\
macp_auth_thing 1\n\
# EOF\n";

    #[test]
    fn counters_are_described_by_their_sample_name() {
        let text = to_prometheus_text(OM);
        assert_eq!(
            text,
            "# HELP macp_auth_mints_total POST /tokens requests.\n\
# TYPE macp_auth_mints_total counter\n\
macp_auth_mints_total{outcome=\"issued\"} 2\n\
# HELP macp_auth_mint_duration_seconds Mint time.\n\
# TYPE macp_auth_mint_duration_seconds histogram\n\
macp_auth_mint_duration_seconds_sum 0.5\n\
macp_auth_mint_duration_seconds_count 2\n\
macp_auth_mint_duration_seconds_bucket{le=\"+Inf\"} 2\n\
# HELP macp_auth_thing Something.\n\
# TYPE macp_auth_thing untyped\n\
macp_auth_thing 1\n"
        );
    }

    #[test]
    fn openmetrics_only_for_scrapers_that_ask() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0, text/plain"
        )));
        let (ct, body) = negotiate(Some(prometheus), OM.to_string());
        assert_eq!((ct, body.as_str()), (OPENMETRICS, OM));
        let (ct, body) = negotiate(None, OM.to_string());
        assert_eq!(ct, PROMETHEUS_TEXT);
        assert!(!body.contains("# EOF"));
    }
}
