//! The backup metadata block: the deterministic `key: value` lines `metis backup` prints and
//! writes to `<dest>.meta`, and the lines `metis restore` checks. One definition for every
//! storage backend, so a SQLite and a redb backup describe themselves identically.

use crate::time::{Timestamp, format_iso};
use std::path::PathBuf;

fn iso_or_dash(ts: Option<Timestamp>) -> String {
    ts.map_or_else(|| "\u{2014}".to_owned(), format_iso)
}

fn lines(title: &str, fields: &[(&str, String)]) -> String {
    let mut out = format!("{title}\n");
    for (k, v) in fields {
        out.push_str(&format!("  {k:<16}{v}\n"));
    }
    out
}

/// The metadata of a published backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupMeta {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub bytes: u64,
    pub schema_version: i64,
    pub events: u64,
    pub oldest_event_us: Option<Timestamp>,
    pub newest_event_us: Option<Timestamp>,
    pub sha256: String,
}

impl BackupMeta {
    /// `backup complete` then one indented `key: value` per line (UTC ISO-8601 or `—`).
    #[must_use]
    pub fn block(&self) -> String {
        lines(
            "backup complete",
            &[
                ("source:", self.source.display().to_string()),
                ("destination:", self.destination.display().to_string()),
                ("bytes:", self.bytes.to_string()),
                ("schema version:", self.schema_version.to_string()),
                ("events:", self.events.to_string()),
                ("oldest event:", iso_or_dash(self.oldest_event_us)),
                ("newest event:", iso_or_dash(self.newest_event_us)),
                ("sha256:", self.sha256.clone()),
            ],
        )
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub bytes: u64,
    pub schema_version: i64,
    pub events: u64,
}

impl RestoreSummary {
    /// `restore complete` and the first five lines of the backup block.
    #[must_use]
    pub fn block(&self) -> String {
        lines(
            "restore complete",
            &[
                ("source:", self.source.display().to_string()),
                ("destination:", self.destination.display().to_string()),
                ("bytes:", self.bytes.to_string()),
                ("schema version:", self.schema_version.to_string()),
                ("events:", self.events.to_string()),
            ],
        )
    }
}

/// The checked fields of a `.meta` file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaFields {
    pub schema_version: Option<String>,
    pub sha256: Option<String>,
    pub events: Option<String>,
}

/// Read the `schema version:`, `sha256:` (lowercased) and `events:` lines of a block.
#[must_use]
pub fn parse_meta(text: &str) -> MetaFields {
    let mut m = MetaFields::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k.trim() {
            "schema version" => m.schema_version = Some(v),
            "sha256" => m.sha256 = Some(v.to_ascii_lowercase()),
            "events" => m.events = Some(v),
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_round_trips_through_parse_meta() {
        let m = BackupMeta {
            source: "/a/metis.db".into(),
            destination: "/b/backup.db".into(),
            bytes: 4096,
            schema_version: 1,
            events: 0,
            oldest_event_us: None,
            newest_event_us: None,
            sha256: "ABC".into(),
        };
        let block = m.block();
        assert!(block.starts_with("backup complete\n  source:         /a/metis.db\n"));
        assert!(block.contains("  oldest event:   \u{2014}\n"));
        let f = parse_meta(&block);
        assert_eq!(f.schema_version.as_deref(), Some("1"));
        assert_eq!(f.sha256.as_deref(), Some("abc"));
        assert_eq!(f.events.as_deref(), Some("0"));
    }
}
