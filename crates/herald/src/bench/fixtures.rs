//! The benchmark workload of `../shared/bench/fixtures`: the standard notification every bench sends
//! (`notification.json` and the files it names), found beside the repository.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// `notification.json`: how the baseline personalises and assembles the standard notification.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Notification {
    pub from_name: String,
    pub from_addr: String,
    pub subject_template: String,
    pub order_no_base: u64,
    pub names: Vec<String>,
    pub message_id_domain: String,
    pub inline_image_file: String,
    pub inline_image_cid: String,
    pub attachment_file: String,
    pub attachment_filename: String,
    pub text_template: String,
    pub html_template: String,
}

/// A fixtures folder and its `notification.json`.
pub(crate) struct Fixtures {
    pub dir: PathBuf,
    pub notification: Notification,
}

impl Fixtures {
    /// `given` (`--fixtures DIR`), or `shared/bench/fixtures` beside the repository, looked up from the
    /// current directory and from where this crate was built.
    pub fn find(given: Option<&Path>) -> anyhow::Result<Fixtures> {
        let dir = match given {
            Some(dir) => dir.to_owned(),
            None => search().context(
                "bench fixtures not found: pass --fixtures DIR (../shared/bench/fixtures)",
            )?,
        };
        let notification = serde_json::from_slice(&read(&dir, "notification.json")?)
            .with_context(|| format!("{}", dir.join("notification.json").display()))?;
        Ok(Fixtures { dir, notification })
    }

    /// A file of the fixtures (one `notification.json` names).
    pub fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        read(&self.dir, name)
    }

    /// A text file of the fixtures.
    pub fn read_text(&self, name: &str) -> anyhow::Result<String> {
        String::from_utf8(self.read(name)?)
            .with_context(|| format!("{} is not UTF-8", self.dir.join(name).display()))
    }
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))
}

fn search() -> Option<PathBuf> {
    let starts = [
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            for candidate in [
                dir.join("shared/bench/fixtures"),
                dir.join("../shared/bench/fixtures"),
            ] {
                if candidate.join("notification.json").is_file() {
                    return Some(candidate);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_notification_json_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = Fixtures::find(Some(dir.path())).err().unwrap();
        assert!(
            format!("{error:#}").contains("notification.json"),
            "{error:#}"
        );
    }
}
