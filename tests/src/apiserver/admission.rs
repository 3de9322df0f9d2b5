//! What a real API server does to an object between the request and etcd:
//! Quantity normalisation, defaulting, and validation of names and labels.
//!
//! Covered: `resources.limits`/`requests` Quantities in canonical form
//! (`0.5` → `500m`, `2048Mi` → `2Gi`); the Deployment, ReplicaSet, Pod,
//! Service and Secret defaults the operator's objects meet (pod spec and
//! container defaults, probe timings, `protocol: TCP`, `targetPort`,
//! `revisionHistoryLimit`, a cluster IP, ...); object names (DNS-1035 label
//! for Services, DNS-1123 label for Namespaces, DNS-1123 subdomain for every
//! other type) and label keys and values, refused with 422 `Invalid` and the
//! real server's messages. Not covered: any other field validation,
//! immutability rules, admission webhooks.

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::resources::ResourceType;

// ---- Quantities -------------------------------------------------------------

const DECIMAL_SUFFIXES: [(&str, i32); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];
const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// A Quantity's value in nano-units (rounded up, as the real server does) and
/// the format family of its suffix.
fn parse_quantity(s: &str) -> Option<(i128, Format)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return None;
    }
    let (negative, digits) = match number.as_bytes()[0] {
        b'-' => (true, &number[1..]),
        b'+' => (false, &number[1..]),
        _ => (false, number),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.chars().all(|c| c.is_ascii_digit())
        || !frac_part.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    // value = mantissa * 10^(-frac_len)
    let mantissa: i128 = format!("{int_part}{frac_part}").parse().ok()?;
    let frac_len = i32::try_from(frac_part.len()).ok()?;
    let (exp10, mult, format) =
        if let Some(&(_, e)) = DECIMAL_SUFFIXES.iter().find(|(sfx, _)| *sfx == suffix) {
            (e, 1i128, Format::DecimalSi)
        } else if let Some(&(_, shift)) = BINARY_SUFFIXES.iter().find(|(sfx, _)| *sfx == suffix) {
            (0, 1i128 << shift, Format::BinarySi)
        } else if let Some(e) = suffix.strip_prefix(['e', 'E']) {
            (e.parse::<i32>().ok()?, 1, Format::DecimalExponent)
        } else {
            return None;
        };
    // nanos = mantissa * mult * 10^(exp10 - frac_len + 9), rounded up.
    let scale = exp10 - frac_len + 9;
    let base = mantissa.checked_mul(mult)?;
    let nanos = if scale >= 0 {
        base.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
    } else {
        let div = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
        (base + div - 1) / div
    };
    Some((if negative { -nanos } else { nanos }, format))
}

/// The canonical text of a Quantity (`resource.Quantity.String()`), or `None`
/// when `s` is not one.
pub fn canonical_quantity(s: &str) -> Option<String> {
    let (nanos, mut format) = parse_quantity(s)?;
    if nanos == 0 {
        return Some("0".into());
    }
    const NANO: i128 = 1_000_000_000;
    if format == Format::BinarySi && (nanos % NANO != 0 || nanos.abs() < 1024 * NANO) {
        format = Format::DecimalSi;
    }
    if format == Format::BinarySi {
        let units = nanos / NANO;
        for &(sfx, shift) in BINARY_SUFFIXES.iter().rev() {
            let d = 1i128 << shift;
            if units % d == 0 {
                return Some(format!("{}{sfx}", units / d));
            }
        }
        return Some(units.to_string());
    }
    // Largest power of 1000 (from 10^-9) that divides the value exactly.
    let mut exp = -9;
    let mut mantissa = nanos;
    while exp < 18 && mantissa % 1000 == 0 {
        mantissa /= 1000;
        exp += 3;
    }
    Some(match format {
        Format::DecimalExponent if exp == 0 => mantissa.to_string(),
        Format::DecimalExponent => format!("{mantissa}e{exp}"),
        _ => {
            let sfx = DECIMAL_SUFFIXES
                .iter()
                .find(|(_, e)| *e == exp)
                .map(|(s, _)| *s)
                .unwrap_or_default();
            format!("{mantissa}{sfx}")
        }
    })
}

/// Normalises the Quantities of built-in types (core and apps); custom
/// resources keep what they were given, as their schema stores strings.
pub fn normalize(rt: &ResourceType, v: &mut Value) {
    if matches!(rt.group.as_str(), "" | "apps") {
        normalize_quantities(v);
    }
}

/// Rewrites every Quantity under `resources.limits` / `resources.requests`
/// (anywhere in the object) in canonical form.
pub fn normalize_quantities(v: &mut Value) {
    let Some(m) = v.as_object_mut() else {
        if let Some(items) = v.as_array_mut() {
            items.iter_mut().for_each(normalize_quantities);
        }
        return;
    };
    for (k, child) in m.iter_mut() {
        if k == "resources"
            && let Some(r) = child.as_object_mut()
        {
            for part in ["limits", "requests"] {
                if let Some(Value::Object(q)) = r.get_mut(part) {
                    for qv in q.values_mut() {
                        let text = match qv {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => continue,
                        };
                        if let Some(c) = canonical_quantity(&text) {
                            *qv = Value::String(c);
                        }
                    }
                }
            }
        }
        normalize_quantities(child);
    }
}

// ---- Defaults -----------------------------------------------------------------

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

fn default(m: &mut Map<String, Value>, key: &str, value: Value) {
    m.entry(key.to_string()).or_insert(value);
}

fn probe_defaults(p: &mut Value) {
    let Some(m) = p.as_object_mut() else { return };
    default(m, "timeoutSeconds", json!(1));
    default(m, "periodSeconds", json!(10));
    default(m, "successThreshold", json!(1));
    default(m, "failureThreshold", json!(3));
    if let Some(h) = obj_mut(p, "httpGet") {
        default(h, "scheme", json!("HTTP"));
    }
}

fn pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = if last.contains('@') {
        return "IfNotPresent";
    } else {
        last.split_once(':').map(|(_, t)| t)
    };
    match tag {
        None | Some("latest") => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container_defaults(c: &mut Value) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(m) = c.as_object_mut() else { return };
    default(m, "terminationMessagePath", json!("/dev/termination-log"));
    default(m, "terminationMessagePolicy", json!("File"));
    default(m, "imagePullPolicy", json!(pull_policy(&image)));
    if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe) {
            probe_defaults(p);
        }
    }
    if let Some(env) = m.get_mut("env").and_then(Value::as_array_mut) {
        for e in env.iter_mut() {
            if let Some(f) = e
                .pointer_mut("/valueFrom/fieldRef")
                .and_then(Value::as_object_mut)
            {
                default(f, "apiVersion", json!("v1"));
            }
        }
    }
}

fn pod_spec_defaults(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    default(m, "restartPolicy", json!("Always"));
    default(m, "terminationGracePeriodSeconds", json!(30));
    default(m, "dnsPolicy", json!("ClusterFirst"));
    default(m, "securityContext", json!({}));
    default(m, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(container_defaults);
        }
    }
    if let Some(vols) = m.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut() {
            for source in ["secret", "configMap"] {
                if let Some(s) = obj_mut(v, source) {
                    default(s, "defaultMode", json!(420));
                }
            }
        }
    }
}

fn workload_defaults(obj: &mut Value, deployment: bool) {
    let Some(spec) = obj_mut(obj, "spec") else {
        return;
    };
    default(spec, "replicas", json!(1));
    if deployment {
        default(spec, "revisionHistoryLimit", json!(10));
        default(spec, "progressDeadlineSeconds", json!(600));
        let strategy = spec
            .entry("strategy")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(s) = strategy {
            default(s, "type", json!("RollingUpdate"));
            if s.get("type").and_then(Value::as_str) == Some("RollingUpdate")
                && let Some(ru) = s
                    .entry("rollingUpdate")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
            {
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
        }
    }
    if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod_spec_defaults(t);
    }
}

/// A cluster IP from 10.96.0.0/12, derived from the Service's identity so it is
/// stable and (practically) unique.
fn cluster_ip(obj: &Value) -> String {
    let id = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!(
        "10.{}.{}.{}",
        96 + (h % 16),
        (h >> 8) % 256,
        1 + (h >> 16) % 254
    )
}

fn service_defaults(obj: &mut Value, old: Option<&Value>) {
    let ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| cluster_ip(obj));
    let Some(spec) = obj_mut(obj, "spec") else {
        return;
    };
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    if spec.get("type").and_then(Value::as_str) == Some("ClusterIP") {
        default(spec, "clusterIP", json!(ip));
        let ip = spec.get("clusterIP").cloned().unwrap_or(json!(ip));
        default(spec, "clusterIPs", json!([ip]));
        default(spec, "ipFamilies", json!(["IPv4"]));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
}

/// Fills the defaults of the built-in types the operator writes or reads.
pub fn apply_defaults(rt: &ResourceType, obj: &mut Value, old: Option<&Value>) {
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("apps", "deployments") => workload_defaults(obj, true),
        ("apps", "replicasets") => workload_defaults(obj, false),
        ("", "pods") => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec_defaults(spec);
            }
        }
        ("", "services") => service_defaults(obj, old),
        ("", "secrets") => {
            if let Some(m) = obj.as_object_mut() {
                default(m, "type", json!("Opaque"));
            }
        }
        // A namespace is Active from creation until it is deleted (`kubectl
        // get ns` shows the phase); its finalizer is the namespace controller's.
        ("", "namespaces") => {
            if let Some(m) = obj.as_object_mut() {
                default(m, "spec", json!({"finalizers": ["kubernetes"]}));
                default(m, "status", json!({"phase": "Active"}));
            }
        }
        _ => {}
    }
}

// ---- Validation -----------------------------------------------------------------

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns1123_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| lower_alnum(c) || c == '-')
        && s.starts_with(lower_alnum)
        && s.ends_with(lower_alnum)
}

/// Problems of `s` as a lowercase RFC 1123 label (max 63).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !dns1123_label_ok(s) {
        out.push(DNS1123_LABEL_MSG.into());
    }
    out
}

/// Problems of `s` as a lowercase RFC 1123 subdomain (max 253).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".into());
    }
    if !s.split('.').all(dns1123_label_ok) {
        out.push(DNS1123_SUBDOMAIN_MSG.into());
    }
    out
}

/// Problems of `s` as a DNS-1035 label (max 63): what Service names must be.
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !(dns1123_label_ok(s) && s.starts_with(|c: char| c.is_ascii_lowercase())) {
        out.push(DNS1035_LABEL_MSG.into());
    }
    out
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn qualified_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Problems of `s` as a label value.
pub fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !s.is_empty() && !qualified_part_ok(s) {
        out.push(LABEL_VALUE_MSG.into());
    }
    out
}

/// Problems of `s` as a qualified name (label or annotation key).
pub fn qualified_name(s: &str) -> Vec<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let mut out = Vec::new();
    if let Some(p) = prefix {
        out.extend(
            dns1123_subdomain(p)
                .into_iter()
                .map(|m| format!("prefix part {m}")),
        );
    }
    if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    }
    if !qualified_part_ok(name) {
        out.push(QUALIFIED_NAME_MSG.into());
    }
    out
}

struct Problems {
    kind: String,
    name: String,
    items: Vec<String>,
}

impl Problems {
    fn check(&mut self, field: &str, value: &str, problems: Vec<String>) {
        for p in problems {
            self.items
                .push(format!("{field}: Invalid value: {value:?}: {p}"));
        }
    }

    fn labels(&mut self, field: &str, labels: Option<&Value>) {
        let Some(m) = labels.and_then(Value::as_object) else {
            return;
        };
        for (k, v) in m {
            self.check(field, k, qualified_name(k));
            let value = v.as_str().unwrap_or_default();
            self.check(field, value, label_value(value));
        }
    }

    fn into_result(self) -> Result<(), ApiError> {
        if self.items.is_empty() {
            return Ok(());
        }
        let message = if self.items.len() == 1 {
            self.items[0].clone()
        } else {
            format!("[{}]", self.items.join(", "))
        };
        Err(ApiError::invalid(format!(
            "{} {:?} is invalid: {message}",
            self.kind, self.name
        )))
    }
}

/// Validates the name (on create) and the labels of `obj` like the real server.
pub fn validate(rt: &ResourceType, obj: &Value, creating: bool) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut p = Problems {
        kind: rt.kind.clone(),
        name: name.to_string(),
        items: Vec::new(),
    };
    if creating {
        let problems = match (rt.group.as_str(), rt.resource.as_str()) {
            ("", "services") => dns1035_label(name),
            ("", "namespaces") => dns1123_label(name),
            _ => dns1123_subdomain(name),
        };
        p.check("metadata.name", name, problems);
    }
    p.labels("metadata.labels", obj.pointer("/metadata/labels"));
    if let Some(m) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for k in m.keys() {
            p.check("metadata.annotations", k, qualified_name(k));
        }
    }
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("apps", "deployments" | "replicasets") => {
            p.labels(
                "spec.selector.matchLabels",
                obj.pointer("/spec/selector/matchLabels"),
            );
            p.labels(
                "spec.template.metadata.labels",
                obj.pointer("/spec/template/metadata/labels"),
            );
        }
        ("", "services") => p.labels("spec.selector", obj.pointer("/spec/selector")),
        _ => {}
    }
    p.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::Registry;

    #[test]
    fn quantities_are_canonical() {
        for (input, want) in [
            ("0.5", "500m"),
            ("2048Mi", "2Gi"),
            ("1000m", "1"),
            ("1000", "1k"),
            ("1.5Gi", "1536Mi"),
            ("100m", "100m"),
            ("1500m", "1500m"),
            ("512Mi", "512Mi"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("0.1", "100m"),
            ("1024", "1024"),
            ("1Ki", "1Ki"),
            ("500", "500"),
        ] {
            assert_eq!(canonical_quantity(input).as_deref(), Some(want), "{input}");
        }
        assert_eq!(canonical_quantity("abc"), None);
        assert_eq!(canonical_quantity("1Zi"), None);
        let mut v = json!({"spec": {"containers": [{"resources": {
            "requests": {"cpu": 0.5, "memory": "2048Mi"}, "limits": {"cpu": "1000m"}}}]},
            "env": [{"value": "0.5"}]});
        normalize_quantities(&mut v);
        assert_eq!(
            v["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "1"}})
        );
        assert_eq!(v["env"][0]["value"], "0.5", "only resources are Quantities");
    }

    #[test]
    fn names_and_labels_are_validated_like_the_real_server() {
        let r = Registry::default();
        let svc = r.find("", "v1", "services").unwrap();
        let sec = r.find("", "v1", "secrets").unwrap();
        let named = |n: &str| json!({"metadata": {"name": n}});
        for bad in ["a.b", "1auth", "A", &"a".repeat(64)] {
            let e = validate(svc, &named(bad), true).unwrap_err();
            assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{bad}");
        }
        let e = validate(svc, &named("a.b"), true).unwrap_err();
        assert!(
            e.message.starts_with(
                "Service \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": a DNS-1035 label"
            ),
            "{}",
            e.message
        );
        assert!(validate(svc, &named(&"a".repeat(63)), true).is_ok());
        assert!(validate(sec, &named("a.b-signing-keys"), true).is_ok());
        assert!(validate(sec, &named("-a"), true).is_err());
        assert!(validate(sec, &named(&"a".repeat(254)), true).is_err());
        let labelled = json!({"metadata": {"name": "s", "labels": {"app.kubernetes.io/instance": "a".repeat(64)}}});
        let e = validate(sec, &labelled, true).unwrap_err();
        assert!(
            e.message.contains("must be no more than 63 characters"),
            "{}",
            e.message
        );
        let key = json!({"metadata": {"name": "s", "labels": {"-bad": "x"}}});
        assert!(validate(sec, &key, true).is_err());
        // Names are checked on create only (they cannot change).
        assert!(validate(svc, &named("a.b"), false).is_ok());
    }

    #[test]
    fn defaults_fill_what_the_real_server_fills() {
        let r = Registry::default();
        let d = r.find("apps", "v1", "deployments").unwrap();
        let mut obj = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "i", "ports": [{"containerPort": 80}],
             "readinessProbe": {"httpGet": {"port": 80}}}]}}}});
        apply_defaults(d, &mut obj, None);
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["readinessProbe"]["timeoutSeconds"], 1);
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(obj["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(obj["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        let s = r.find("", "v1", "services").unwrap();
        let mut svc = json!({"metadata": {"uid": "u"}, "spec": {"ports": [{"port": 80}]}});
        apply_defaults(s, &mut svc, None);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        let ip = svc["spec"]["clusterIP"].clone();
        let mut again = json!({"metadata": {"uid": "other"}, "spec": {}});
        apply_defaults(s, &mut again, Some(&svc));
        assert_eq!(again["spec"]["clusterIP"], ip, "the cluster IP is kept");
        assert_eq!(pull_policy("reg:5000/x:1.2"), "IfNotPresent");
        assert_eq!(pull_policy("reg:5000/x"), "Always");
    }
}
