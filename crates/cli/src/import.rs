//! `sealpost directory import`: a bulk directory load from a JSON Lines file, one
//! organisation or endpoint a line, written in file order through the Directory service
//! (so the operator's certificate and every validation apply). An entry that already
//! exists is skipped, a bad line is reported with its number and the problem and the rest
//! goes on; nothing written before a failure is undone. Bounded in file size and lines.

use std::path::Path;

use anyhow::Context;
use sealpost_proto::v1::directory_client::DirectoryClient;
use serde::Deserialize;

use crate::client_cmd::{EndpointArgs, OrgArgs};
use tonic::Code;
use tonic::transport::Channel;

/// Largest import file, in bytes.
pub const IMPORT_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most lines one import file may hold.
pub const IMPORT_LINES_MAX: usize = 1_000_000;
/// Failed lines reported one by one; past this only counted.
pub const IMPORT_FAILURES_LISTED_MAX: usize = 100;

/// One line of an import file.
#[derive(Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Entry {
    /// As `directory register-org`; without keys the provider generates them.
    Organisation(OrgArgs),
    /// As `directory publish`.
    Endpoint(EndpointArgs),
}

/// What an import did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ImportReport {
    pub organisations: u64,
    pub endpoints: u64,
    /// Entries already in the directory.
    pub skipped: u64,
    pub failed: u64,
    /// `line N: problem`, the first [`IMPORT_FAILURES_LISTED_MAX`].
    pub failures: Vec<String>,
}

impl ImportReport {
    fn fail(&mut self, line: usize, problem: String) {
        self.failed += 1;
        if self.failures.len() < IMPORT_FAILURES_LISTED_MAX {
            self.failures.push(format!("line {line}: {problem}"));
        }
    }
}

/// Reads and checks the file's size before anything is written.
pub fn read_file(path: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    if len > IMPORT_FILE_BYTES_MAX {
        anyhow::bail!(
            "{}: {len} bytes, the limit is {IMPORT_FILE_BYTES_MAX} bytes; split the file",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let lines = text.lines().count();
    if lines > IMPORT_LINES_MAX {
        anyhow::bail!(
            "{}: {lines} lines, the limit is {IMPORT_LINES_MAX}; split the file",
            path.display()
        );
    }
    Ok(text)
}

/// Writes every entry of `text` in order.
pub async fn import(dir: &mut DirectoryClient<Channel>, text: &str) -> ImportReport {
    let mut report = ImportReport::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let entry: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                report.fail(n, format!("not an organisation or endpoint entry: {e}"));
                continue;
            }
        };
        let (outcome, organisation) = match entry {
            Entry::Organisation(org) => {
                let request = match org.request() {
                    Ok(r) => r,
                    Err(e) => {
                        report.fail(n, format!("{e:#}"));
                        continue;
                    }
                };
                let r = dir.register_organisation(request).await;
                (r.map(|_| ()), true)
            }
            Entry::Endpoint(ep) => {
                let r = dir.publish_endpoint(ep.request()).await;
                (r.map(|_| ()), false)
            }
        };
        match outcome {
            Ok(()) if organisation => report.organisations += 1,
            Ok(()) => report.endpoints += 1,
            Err(s) if s.code() == Code::AlreadyExists => report.skipped += 1,
            Err(s) => report.fail(n, s.message().to_string()),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_their_kind_and_refuse_unknown_fields() {
        let org: Entry = serde_json::from_str(
            r#"{"kind":"organisation","hpio":"8003620000001011","name":"GP","suburb":"Carlton","state":"VIC","postcode":"3053"}"#,
        )
        .expect("organisation");
        assert!(matches!(org, Entry::Organisation(ref o) if o.hpio() == "8003620000001011"));
        let ep: Entry = serde_json::from_str(
            r#"{"kind":"endpoint","id":"8003620000001011/gp","name":"GP","specialty":"General","accepts":["ORU^R01"]}"#,
        )
        .expect("endpoint");
        assert!(matches!(ep, Entry::Endpoint { .. }));
        for bad in [
            r#"{"kind":"practitioner","id":"x"}"#,
            r#"{"kind":"endpoint","id":"x","name":"n","specialty":"s","accepts":[],"extra":1}"#,
            r#"{"hpio":"8003620000001011"}"#,
        ] {
            assert!(serde_json::from_str::<Entry>(bad).is_err(), "{bad}");
        }
    }
}
