//! Request log and fault injection: what tests observe and break.

/// One request as the server understood it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// API group, `""` for core.
    pub group: String,
    /// Plural resource, with `/status` for the status subresource (`macpauths/status`).
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RecordedRequest {
    /// Whether the verb changes state.
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
    }
}

/// The next `remaining` writes to `resource` fail with `code`.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub resource: String,
    pub code: u16,
    pub remaining: usize,
}

/// Consumes one matching fault, returning its code.
pub(crate) fn take_fault(faults: &mut Vec<Fault>, resource: &str) -> Option<u16> {
    let idx = faults
        .iter()
        .position(|f| f.resource == resource && f.remaining > 0)?;
    let f = &mut faults[idx];
    f.remaining -= 1;
    let code = f.code;
    if f.remaining == 0 {
        faults.remove(idx);
    }
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed() {
        let mut f = vec![Fault {
            resource: "deployments".into(),
            code: 500,
            remaining: 2,
        }];
        assert_eq!(take_fault(&mut f, "secrets"), None);
        assert_eq!(take_fault(&mut f, "deployments"), Some(500));
        assert_eq!(take_fault(&mut f, "deployments"), Some(500));
        assert_eq!(take_fault(&mut f, "deployments"), None);
        assert!(f.is_empty());
    }
}
