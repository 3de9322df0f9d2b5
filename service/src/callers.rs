//! Caller authentication for `POST /tokens` (`MACP_AUTH_MINT_TOKENS_FILE`).
//!
//! The file holds one accepted bearer token per line; blank lines and lines
//! starting with `#` are ignored. Tokens are kept only as SHA-256 digests and
//! a presented token is hashed and compared against every digest in constant
//! time with no early exit, so neither the token length nor which entry
//! matched leaks through timing. A caller's identity (for the audit log and
//! the rate limit) is `caller-` plus the first 8 hex digits of the token's
//! SHA-256: stable, distinct per token, and useless for minting.
//!
//! The file is re-read by polling its path (a mounted Secret is updated by a
//! symlink swap, which inotify on the old inode would miss). A reload never
//! fails open: the set becomes exactly the file's valid lines, so a token
//! taken out of the file stops minting whatever else the file holds. Invalid
//! lines are dropped (and reported by line number, never by content), and an
//! empty or unreadable file admits no caller. Only the file read at startup
//! is refused whole ([`CallerSet::parse`]): a pod that cannot start admits
//! no caller either, and the mistake shows before anything depends on it.

use std::sync::Arc;

use parking_lot::RwLock;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Shortest accepted token: anything shorter is guessable, and a typo such as
/// a stray word in the file should stop the service, not become a credential.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a tokens file was refused.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum CallerFileError {
    #[error("contains no tokens (one bearer token per line; # starts a comment)")]
    Empty,
    #[error("line {line}: token is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort { line: usize },
    #[error("line {line}: token contains whitespace or control characters")]
    BadCharacter { line: usize },
}

#[derive(Clone, Debug)]
struct Entry {
    digest: [u8; 32],
    identity: String,
}

/// A parsed set of accepted tokens.
#[derive(Clone, Debug)]
pub struct CallerSet {
    entries: Vec<Entry>,
    /// SHA-256 of the file text it was parsed from (to skip unchanged reloads).
    source_digest: [u8; 32],
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `caller-<first 8 hex digits of sha256(token)>`.
pub fn identity_of(token: &str) -> String {
    identity_from_digest(&sha256(token.as_bytes()))
}

fn identity_from_digest(digest: &[u8; 32]) -> String {
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("caller-{hex}")
}

/// The tokens of the valid lines of `text`, and the problem of each invalid
/// line, in line order. Every line is trimmed; duplicates are harmless.
fn parse_lines(text: &str) -> (Vec<Entry>, Vec<CallerFileError>) {
    let mut entries = Vec::new();
    let mut dropped = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let token = raw.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        let line = index + 1;
        // Header values cannot carry these, so such a token could never match.
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            dropped.push(CallerFileError::BadCharacter { line });
            continue;
        }
        if token.len() < MIN_TOKEN_LEN {
            dropped.push(CallerFileError::TooShort { line });
            continue;
        }
        let digest = sha256(token.as_bytes());
        entries.push(Entry {
            digest,
            identity: identity_from_digest(&digest),
        });
    }
    (entries, dropped)
}

impl CallerSet {
    /// Parses the file text read at startup: any invalid line, or no token
    /// at all, refuses the whole file.
    pub fn parse(text: &str) -> Result<CallerSet, CallerFileError> {
        let (entries, dropped) = parse_lines(text);
        if let Some(first) = dropped.into_iter().next() {
            return Err(first);
        }
        if entries.is_empty() {
            return Err(CallerFileError::Empty);
        }
        Ok(CallerSet {
            entries,
            source_digest: sha256(text.as_bytes()),
        })
    }

    /// Parses a reloaded file: the valid lines make the set (possibly
    /// empty), the invalid ones are returned.
    pub fn parse_valid_lines(text: &str) -> (CallerSet, Vec<CallerFileError>) {
        let (entries, dropped) = parse_lines(text);
        let set = CallerSet {
            entries,
            source_digest: sha256(text.as_bytes()),
        };
        (set, dropped)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of `token` if it is accepted. Runs over every entry
    /// whatever matches.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        let presented = sha256(token.as_bytes());
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            let eq = entry.digest.ct_eq(&presented);
            found |= eq;
            index = u32::conditional_select(&index, &(i as u32), eq);
        }
        if bool::from(found) {
            self.entries
                .get(index as usize)
                .map(|e| e.identity.as_str())
        } else {
            None
        }
    }
}

/// The result of presenting an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthResult {
    Ok(String),
    Missing,
    Invalid,
}

/// The live token set, swapped atomically on reload.
#[derive(Debug)]
pub struct CallerAuth {
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    set: Arc<CallerSet>,
    /// What the set was made from, to skip reloads that change nothing.
    source: Source,
}

#[derive(Debug, PartialEq, Eq)]
enum Source {
    Text([u8; 32]),
    Unreadable(String),
}

/// What [`CallerAuth::reload`] or [`CallerAuth::unreadable`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The same text (or the same read error) as last time: nothing changed.
    Unchanged,
    /// The set is now exactly the file's valid lines; `dropped` lists the
    /// invalid ones. `tokens` may be 0: the file then admits no caller.
    Replaced {
        tokens: usize,
        dropped: Vec<CallerFileError>,
    },
    /// The file could not be read: no caller is admitted until it can.
    Unreadable { error: String },
}

impl Reload {
    /// The `result` label of `caller_token_reloads_total`: `ok`,
    /// `invalid_lines`, `empty` or `unreadable`; `None` when nothing changed.
    pub fn result(&self) -> Option<&'static str> {
        match self {
            Reload::Unchanged => None,
            Reload::Replaced { tokens: 0, .. } => Some(RELOAD_EMPTY),
            Reload::Replaced { dropped, .. } if !dropped.is_empty() => Some(RELOAD_INVALID_LINES),
            Reload::Replaced { .. } => Some(RELOAD_OK),
            Reload::Unreadable { .. } => Some(RELOAD_UNREADABLE),
        }
    }

    /// The line numbers of the dropped lines (never their content).
    pub fn dropped_lines(&self) -> Vec<usize> {
        match self {
            Reload::Replaced { dropped, .. } => dropped
                .iter()
                .filter_map(|e| match e {
                    CallerFileError::TooShort { line } | CallerFileError::BadCharacter { line } => {
                        Some(*line)
                    }
                    CallerFileError::Empty => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Every valid line applied, none dropped.
pub const RELOAD_OK: &str = "ok";
/// Some lines were invalid and dropped; the valid ones apply.
pub const RELOAD_INVALID_LINES: &str = "invalid_lines";
/// The file holds no valid token: no caller is admitted.
pub const RELOAD_EMPTY: &str = "empty";
/// The file could not be read: no caller is admitted.
pub const RELOAD_UNREADABLE: &str = "unreadable";
/// Every `result` label, for metrics that report each from the start.
pub const RELOAD_RESULTS: [&str; 4] = [
    RELOAD_OK,
    RELOAD_INVALID_LINES,
    RELOAD_EMPTY,
    RELOAD_UNREADABLE,
];

impl CallerAuth {
    pub fn new(set: CallerSet) -> Self {
        let source = Source::Text(set.source_digest);
        CallerAuth {
            current: RwLock::new(Current {
                set: Arc::new(set),
                source,
            }),
        }
    }

    fn snapshot(&self) -> Arc<CallerSet> {
        self.current.read().set.clone()
    }

    pub fn token_count(&self) -> usize {
        self.snapshot().len()
    }

    /// Checks an `Authorization` header value (`Bearer <token>`, scheme
    /// case-insensitive).
    pub fn check(&self, header: Option<&[u8]>) -> AuthResult {
        let Some(value) = header else {
            return AuthResult::Missing;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return AuthResult::Invalid;
        };
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return AuthResult::Invalid,
        };
        match self.snapshot().authenticate(token) {
            Some(identity) => AuthResult::Ok(identity.to_string()),
            None => AuthResult::Invalid,
        }
    }

    /// Replaces the set with the valid lines of `text` if the text changed.
    /// Never keeps a token that is not in `text`: a revocation takes effect
    /// even when the new file has mistakes.
    pub fn reload(&self, text: &str) -> Reload {
        let source = Source::Text(sha256(text.as_bytes()));
        let mut current = self.current.write();
        if current.source == source {
            return Reload::Unchanged;
        }
        let (set, dropped) = CallerSet::parse_valid_lines(text);
        let tokens = set.len();
        *current = Current {
            set: Arc::new(set),
            source,
        };
        Reload::Replaced { tokens, dropped }
    }

    /// The file could not be read (`error`): no caller is admitted until it
    /// can, since the tokens it holds now are unknown.
    pub fn unreadable(&self, error: String) -> Reload {
        let source = Source::Unreadable(error.clone());
        let mut current = self.current.write();
        if current.source == source {
            return Reload::Unchanged;
        }
        *current = Current {
            set: Arc::new(CallerSet {
                entries: Vec::new(),
                source_digest: [0; 32],
            }),
            source,
        };
        Reload::Unreadable { error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn parse_skips_comments_and_blank_lines() {
        let set = CallerSet::parse(&format!("# callers\n\n  {A}  \r\n#{B}\n")).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.authenticate(A), Some(identity_of(A).as_str()));
        assert_eq!(set.authenticate(B), None);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(CallerSet::parse("").unwrap_err(), CallerFileError::Empty);
        assert_eq!(
            CallerSet::parse("# only\n\n").unwrap_err(),
            CallerFileError::Empty
        );
        assert_eq!(
            CallerSet::parse(&format!("{A}\nshort\n")).unwrap_err(),
            CallerFileError::TooShort { line: 2 }
        );
        assert_eq!(
            CallerSet::parse("two words-that-are-long-enough").unwrap_err(),
            CallerFileError::BadCharacter { line: 1 }
        );
    }

    #[test]
    fn identity_is_a_digest_prefix_not_the_token() {
        let id = identity_of(A);
        assert!(id.starts_with("caller-"));
        assert_eq!(id.len(), "caller-".len() + 8);
        assert!(!id.contains(A));
        assert_ne!(id, identity_of(B));
    }

    #[test]
    fn check_header_forms() {
        let auth = CallerAuth::new(CallerSet::parse(&format!("{A}\n{B}\n")).unwrap());
        let hdr = |s: &str| auth.check(Some(s.as_bytes()));
        assert_eq!(hdr(&format!("Bearer {A}")), AuthResult::Ok(identity_of(A)));
        assert_eq!(hdr(&format!("bearer {B}")), AuthResult::Ok(identity_of(B)));
        assert_eq!(hdr(&format!("Basic {A}")), AuthResult::Invalid);
        assert_eq!(hdr(A), AuthResult::Invalid);
        assert_eq!(hdr("Bearer "), AuthResult::Invalid);
        assert_eq!(hdr(&format!("Bearer {A}x")), AuthResult::Invalid);
        assert_eq!(auth.check(Some(&[0xff, 0xfe])), AuthResult::Invalid);
        assert_eq!(auth.check(None), AuthResult::Missing);
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn reload_replaces_with_exactly_the_valid_lines() {
        let auth = CallerAuth::new(CallerSet::parse(&format!("{A}\n{B}\n")).unwrap());
        assert_eq!(auth.reload(&format!("{A}\n{B}\n")), Reload::Unchanged);
        // B revoked in a file that also has a mistake: A stays, B goes, the
        // bad line is reported by number.
        let reload = auth.reload(&format!("{A}\nshort\n"));
        assert_eq!(
            reload,
            Reload::Replaced {
                tokens: 1,
                dropped: vec![CallerFileError::TooShort { line: 2 }]
            }
        );
        assert_eq!(reload.result(), Some(RELOAD_INVALID_LINES));
        assert_eq!(reload.dropped_lines(), vec![2]);
        assert_eq!(auth.check(Some(&bearer(A))), AuthResult::Ok(identity_of(A)));
        assert_eq!(auth.check(Some(&bearer(B))), AuthResult::Invalid);

        let reload = auth.reload(&format!("{B}\n"));
        assert_eq!(reload.result(), Some(RELOAD_OK));
        assert_eq!(auth.check(Some(&bearer(A))), AuthResult::Invalid);
        assert_eq!(auth.token_count(), 1);
    }

    #[test]
    fn an_empty_or_unreadable_file_admits_no_caller() {
        let auth = CallerAuth::new(CallerSet::parse(A).unwrap());
        let reload = auth.reload("# emptied by mistake\n");
        assert_eq!(reload.result(), Some(RELOAD_EMPTY));
        assert_eq!(auth.check(Some(&bearer(A))), AuthResult::Invalid);
        assert_eq!(auth.token_count(), 0);

        assert_eq!(auth.reload(A).result(), Some(RELOAD_OK));
        let reload = auth.unreadable("no such file".into());
        assert_eq!(reload.result(), Some(RELOAD_UNREADABLE));
        assert_eq!(auth.unreadable("no such file".into()), Reload::Unchanged);
        assert_eq!(auth.check(Some(&bearer(A))), AuthResult::Invalid);
        // The same text as before the read failed applies again.
        assert_eq!(auth.reload(A).result(), Some(RELOAD_OK));
        assert_eq!(auth.check(Some(&bearer(A))), AuthResult::Ok(identity_of(A)));
    }
}
