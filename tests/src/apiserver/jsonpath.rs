//! The JSONPath subset of CRD `additionalPrinterColumns`: `.a.b`, `[n]`,
//! `[*]` and `[?(@.x.y=="v")]` (also `!=`, single quotes, numbers).

use serde_json::Value;

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter {
        path: Vec<String>,
        equal: bool,
        value: Value,
    },
}

fn parse(expr: &str) -> Option<Vec<Step>> {
    let mut s = expr.trim();
    s = s.strip_prefix('{').unwrap_or(s);
    s = s.strip_suffix('}').unwrap_or(s);
    s = s.strip_prefix('$').unwrap_or(s);
    let mut steps = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                if j > start {
                    steps.push(Step::Field(s[start..j].to_string()));
                }
                i = j;
            }
            b'[' => {
                let end = s[i..].find(']')? + i;
                // A filter's value may hold ']' only inside quotes, which the
                // printer columns of this project never do.
                let inner = s[i + 1..end].trim();
                steps.push(bracket(inner)?);
                i = end + 1;
            }
            _ => {
                let start = i;
                let mut j = i;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                steps.push(Step::Field(s[start..j].to_string()));
                i = j;
            }
        }
    }
    Some(steps)
}

fn bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::All);
    }
    if let Ok(n) = inner.parse::<usize>() {
        return Some(Step::Index(n));
    }
    let cond = inner.strip_prefix("?(")?.strip_suffix(')')?.trim();
    let (lhs, rhs, equal) = match (cond.find("=="), cond.find("!=")) {
        (Some(p), _) => (&cond[..p], &cond[p + 2..], true),
        (None, Some(p)) => (&cond[..p], &cond[p + 2..], false),
        _ => return None,
    };
    let path = lhs
        .trim()
        .strip_prefix('@')?
        .split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let rhs = rhs.trim();
    let value = if let Some(q) = rhs
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
    {
        Value::String(q.to_string())
    } else {
        serde_json::from_str(rhs).ok()?
    };
    Some(Step::Filter { path, equal, value })
}

/// Every value the expression selects in `obj` (empty when nothing matches
/// or the expression is outside the subset).
pub fn find(obj: &Value, expr: &str) -> Vec<Value> {
    let Some(steps) = parse(expr) else {
        return Vec::new();
    };
    let mut cur = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(n) => next.extend(v.get(*n)),
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter { path, equal, value } => {
                    if let Value::Array(a) = v {
                        next.extend(a.iter().filter(|item| {
                            let mut x = Some(*item);
                            for p in path {
                                x = x.and_then(|x| x.get(p.as_str()));
                            }
                            (x == Some(value)) == *equal
                        }));
                    }
                }
            }
        }
        cur = next;
    }
    cur.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths() {
        let o = json!({"status": {"phase": "Ready", "conditions": [
            {"type": "Progressing", "status": "False"}, {"type": "Ready", "status": "True"}]},
            "spec": {"ports": [{"port": 1}, {"port": 2}]}});
        assert_eq!(find(&o, ".status.phase"), vec![json!("Ready")]);
        assert_eq!(
            find(&o, r#".status.conditions[?(@.type=="Ready")].status"#),
            vec![json!("True")]
        );
        assert_eq!(
            find(&o, ".status.conditions[?(@.type!='Ready')].type"),
            vec![json!("Progressing")]
        );
        assert_eq!(find(&o, ".spec.ports[*].port"), vec![json!(1), json!(2)]);
        assert_eq!(find(&o, "{.spec.ports[1].port}"), vec![json!(2)]);
        assert!(find(&o, ".status.missing").is_empty());
        assert!(find(&o, ".status.conditions[?(@.type)]").is_empty());
    }
}
