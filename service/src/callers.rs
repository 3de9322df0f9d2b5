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
//! symlink swap, which inotify on the old inode would miss). A reload that
//! fails keeps the previous set.

use std::sync::{Arc, RwLock};

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

impl CallerSet {
    /// Parses the file text. Every line is trimmed; duplicates are harmless.
    pub fn parse(text: &str) -> Result<CallerSet, CallerFileError> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let token = raw.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let line = index + 1;
            // Header values cannot carry these, so such a token could never match.
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(CallerFileError::BadCharacter { line });
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(CallerFileError::TooShort { line });
            }
            let digest = sha256(token.as_bytes());
            entries.push(Entry {
                digest,
                identity: identity_from_digest(&digest),
            });
        }
        if entries.is_empty() {
            return Err(CallerFileError::Empty);
        }
        Ok(CallerSet {
            entries,
            source_digest: sha256(text.as_bytes()),
        })
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
    current: RwLock<Arc<CallerSet>>,
}

/// What [`CallerAuth::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Replaced { tokens: usize },
}

impl CallerAuth {
    pub fn new(set: CallerSet) -> Self {
        CallerAuth {
            current: RwLock::new(Arc::new(set)),
        }
    }

    fn snapshot(&self) -> Arc<CallerSet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Replaces the set with the one parsed from `text` if the text changed.
    /// On a parse error the previous set stays in force.
    pub fn reload(&self, text: &str) -> Result<Reload, CallerFileError> {
        if self.snapshot().source_digest == sha256(text.as_bytes()) {
            return Ok(Reload::Unchanged);
        }
        let set = CallerSet::parse(text)?;
        let tokens = set.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(Reload::Replaced { tokens })
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

    #[test]
    fn reload_replaces_or_keeps() {
        let auth = CallerAuth::new(CallerSet::parse(A).unwrap());
        assert_eq!(auth.reload(A).unwrap(), Reload::Unchanged);
        assert_eq!(
            auth.reload(&format!("{B}\n")).unwrap(),
            Reload::Replaced { tokens: 1 }
        );
        assert_eq!(
            auth.check(Some(format!("Bearer {A}").as_bytes())),
            AuthResult::Invalid
        );
        // A broken file keeps the previous set.
        assert!(auth.reload("").is_err());
        assert_eq!(
            auth.check(Some(format!("Bearer {B}").as_bytes())),
            AuthResult::Ok(identity_of(B))
        );
        assert_eq!(auth.token_count(), 1);
    }
}
