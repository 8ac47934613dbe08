//! Reading fleet.conf: top-level `key=value` lines (rust-ini), each known key
//! looked up in the option table by its name.

use std::collections::BTreeMap;
use std::path::Path;

use super::{ConfigError, Opt, Origin, RawConfig};

impl RawConfig {
    /// Reads the options of a config file's text (`path` is for messages).
    /// Options are top level; a later line overrides an earlier one.
    pub fn read_file_text(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let opts = ini::ParseOption {
            // Quotes are stripped below, only around the whole value: the
            // parser's own quote handling also drops quotes in the middle.
            enabled_quote: false,
            // Backslashes are literal (paths, passwords).
            enabled_escape: false,
            ..ini::ParseOption::default()
        };
        let parsed =
            ini::Ini::load_from_str_opt(text, opts).map_err(|cause| ConfigError::ParseFile {
                path: path.to_path_buf(),
                cause,
            })?;
        let lines = key_lines(text);
        for (section, props) in &parsed {
            if let Some(section) = section {
                if !props.is_empty() {
                    self.warnings.push(format!(
                        "section [{section}] in {} ignored: fleet options are top level",
                        path.display()
                    ));
                }
                continue;
            }
            for (key, value) in props {
                match Opt::from_name(key) {
                    Some(opt) => self.set(
                        opt,
                        unquote(value).to_owned(),
                        Origin::File {
                            path: path.to_path_buf(),
                            line: lines.get(key).copied(),
                        },
                    ),
                    None => self.warnings.push(format!(
                        "unknown option {key:?} in {} ignored",
                        path.display()
                    )),
                }
            }
        }
        Ok(())
    }
}

/// The 1-based line of the last top-level `key=value` (or `key: value`) of
/// each key in a config file's text: the line whose value wins, as a later
/// line overrides an earlier one. Lines inside a `[section]` are not
/// counted, nor comments.
pub(super) fn key_lines(text: &str) -> BTreeMap<&str, usize> {
    let mut lines = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            // Every option after the first section header is in a section.
            break;
        }
        if line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(end) = line.find(['=', ':']) {
            lines.insert(line[..end].trim(), i + 1);
        }
    }
    lines
}

/// Strips one pair of matching quotes around the whole value.
fn unquote(value: &str) -> &str {
    let value = value.trim();
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}
