//! Unit files on disk, names typed on the command line, and what fleetctl
//! derives from a unit's options.
//!
//! - Names: an argument is a path or a name; its unit name is the last path
//!   element with `.service` appended unless it already ends in one of the
//!   seven suffixes the agent loads ([`units::mangle_name`]). The same rule
//!   applied to the whole argument gives the file to read
//!   ([`append_default_type`]): `fleetctl start web` reads `web.service`.
//! - Contents: [`unit_file_for`] reads the argument's file if it exists;
//!   otherwise, for an instance `foo@bar.service`, it copies the template
//!   `foo@.service` from the registry, or failing that from the file next to
//!   the argument (`<dir of arg>/foo@.service`). The instance gets the
//!   template's options unchanged, hence the same hash.
//! - Errors reading a file name the file, and parse errors give the line
//!   (and, for a value that could not be written back as the same unit-file
//!   line, such as one with a control character or ending in a backslash,
//!   the section and option).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use fleetd::client::FleetApi;
use fleetd::schema;
use units::{Requirements, UnitFile, UnitName};

use crate::render::UnitFacts;
use crate::ui::Ui;

/// Go's `maybeAppendDefaultUnitType`: appends `.service` to the whole
/// argument unless it ends in a suffix the agent loads
/// ([`units::append_default_type`]).
pub fn append_default_type(arg: &str) -> String {
    units::append_default_type(arg)
}

/// The unit name an argument stands for ([`units::mangle_name`]).
pub fn unit_name(arg: &str) -> String {
    units::mangle_name(arg)
}

/// Whether something is at `path`, as Go's `!os.IsNotExist(os.Stat(path))`:
/// a file we may not read still "exists", so reading it reports why.
pub fn exists(path: &Path) -> bool {
    match fs::metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// Reads and parses a unit file. Parse errors name the line; the caller
/// names the file.
pub fn read_unit_file(path: &Path) -> anyhow::Result<UnitFile> {
    let text = fs::read(path)?;
    let text = String::from_utf8(text).map_err(|e| anyhow!("not UTF-8 text ({e})"))?;
    Ok(UnitFile::parse(&text)?)
}

/// Where a template's file would be for an argument: next to it.
pub fn local_template_path(arg: &str, template: &str) -> PathBuf {
    Path::new(arg)
        .parent()
        .unwrap_or_else(|| Path::new(""))
        .join(template)
}

/// The unit file made of an API unit's options.
pub fn file_of(unit: &schema::Unit) -> UnitFile {
    UnitFile::from_options(unit.options.iter().cloned().map(Into::into).collect())
}

/// The API options of a unit file.
pub fn options_of(file: &UnitFile) -> Vec<schema::UnitOption> {
    file.options().iter().cloned().map(Into::into).collect()
}

/// The `[X-Fleet]` requirements of an API unit, without the combination
/// checks (units in the registry passed them already). A unit whose name is
/// not valid has none.
pub fn requirements_of(unit: &schema::Unit) -> Requirements {
    match unit.name.parse::<UnitName>() {
        Ok(name) => Requirements::extract(&name, &file_of(unit)),
        Err(_) => Requirements::default(),
    }
}

/// Whether an API unit is global (`[X-Fleet] Global=true`).
pub fn is_global(unit: &schema::Unit) -> bool {
    requirements_of(unit).global
}

/// What `list-unit-files` shows about a unit beyond its API object.
pub fn facts(unit: &schema::Unit) -> UnitFacts {
    let file = file_of(unit);
    UnitFacts {
        global: requirements_of(unit).global,
        hash: file.hash().to_string(),
        description: file.description().map(str::to_owned),
    }
}

/// How a local file compares with a unit in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMatch {
    /// Same content.
    Same,
    /// Different content; a warning was printed unless `--replace`.
    Different,
    /// No local file (nor local template file) to compare with.
    NoLocalFile,
}

/// Compares the local file of `arg` (or, when there is none and `arg` names
/// an instance, the local template file) with the registry unit `su`, and
/// warns when they differ and `replace` is off (Go's `isLocalUnitDifferent`).
///
/// # Errors
///
/// A local file that exists but cannot be read or parsed.
pub fn compare_local(
    arg: &str,
    su: &schema::Unit,
    replace: bool,
    ui: &mut Ui,
) -> anyhow::Result<LocalMatch> {
    let registry_hash = file_of(su).hash();
    let path = Path::new(arg);
    if exists(path) {
        let local = read_unit_file(path)
            .with_context(|| format!("failed getting Unit({arg}) from file"))?;
        if local.hash() == registry_hash {
            return Ok(LocalMatch::Same);
        }
        if !replace {
            ui.warn(format!(
                "WARNING: Unit {} in registry differs from local unit file {arg}. Add --replace to override.",
                su.name
            ));
        }
        return Ok(LocalMatch::Different);
    }
    let Some(template) = unit_name(arg)
        .parse::<UnitName>()
        .ok()
        .and_then(|n| n.template())
    else {
        return Ok(LocalMatch::NoLocalFile);
    };
    let tpath = local_template_path(arg, template.as_str());
    if !exists(&tpath) {
        return Ok(LocalMatch::NoLocalFile);
    }
    let local = read_unit_file(&tpath).with_context(|| {
        format!(
            "failed getting template Unit({template}) from file {}",
            tpath.display()
        )
    })?;
    if local.hash() == registry_hash {
        return Ok(LocalMatch::Same);
    }
    if !replace {
        ui.warn(format!(
            "WARNING: Unit {} in registry differs from local template unit file {arg}. Add --replace to override.",
            su.name
        ));
    }
    Ok(LocalMatch::Different)
}

/// The contents to submit for `arg` (already passed through
/// [`append_default_type`]): its local file, or for an instance its
/// template, from the registry first, then from `<dir of arg>/<template>`.
///
/// # Errors
///
/// No file and no template; a file or template file that cannot be read or
/// parsed (the message names the file and, for parse errors, the line); the
/// registry cannot be asked.
pub async fn unit_file_for<A: FleetApi>(
    api: &A,
    arg: &str,
    replace: bool,
    ui: &mut Ui,
) -> anyhow::Result<UnitFile> {
    let name = unit_name(arg);
    let path = Path::new(arg);
    if exists(path) {
        tracing::debug!(unit = %name, file = arg, "unit found in local filesystem");
        return read_unit_file(path)
            .with_context(|| format!("failed getting Unit({arg}) from file"));
    }
    let template = match name.parse::<UnitName>() {
        Ok(n) if n.is_instance() => n.template(),
        Ok(_) => None,
        Err(e) => {
            return Err(anyhow!(
                "error extracting information from unit name {name}: {e}"
            ));
        }
    };
    let Some(template) = template else {
        return Err(anyhow!(
            "unable to find Unit({name}) in Registry or on filesystem"
        ));
    };
    let from_template = async {
        let registry = api
            .unit(template.as_str())
            .await
            .with_context(|| format!("error retrieving template Unit({template}) from Registry"))?;
        if let Some(tmpl) = registry {
            tracing::debug!(template = %template, "template unit found in registry");
            // Only a warning: a local template that differs (or does not
            // parse) does not stop the registry's from being used.
            if let Err(err) = compare_local(arg, &tmpl, replace, ui) {
                tracing::debug!(error = %format!("{err:#}"), "cannot compare with the local template");
            }
            return Ok(file_of(&tmpl));
        }
        let tpath = local_template_path(arg, template.as_str());
        if !exists(&tpath) {
            return Err(anyhow!(
                "unable to find template Unit({template}) in Registry or on filesystem"
            ));
        }
        read_unit_file(&tpath)
            .with_context(|| format!("unable to load template Unit({template}) from file"))
    };
    from_template
        .await
        .with_context(|| format!("failed getting Unit({arg}) from template"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use fleetd::client::Result as ApiResult;
    use fleetd::schema::{Machine, TargetState, Unit, UnitState};

    use crate::ui::testing::capture;

    /// Just enough registry for template lookups.
    #[derive(Default)]
    struct Registry(Mutex<BTreeMap<String, Unit>>);

    impl Registry {
        fn with(units: &[(&str, &str)]) -> Registry {
            let r = Registry::default();
            for (name, text) in units {
                let file = UnitFile::parse(text).unwrap();
                r.0.lock().unwrap().insert(
                    (*name).to_owned(),
                    Unit {
                        name: (*name).to_owned(),
                        options: options_of(&file),
                        ..Unit::default()
                    },
                );
            }
            r
        }
    }

    impl FleetApi for Registry {
        async fn machines(&self) -> ApiResult<Vec<Machine>> {
            Ok(Vec::new())
        }
        async fn unit(&self, name: &str) -> ApiResult<Option<Unit>> {
            Ok(self.0.lock().unwrap().get(name).cloned())
        }
        async fn units(&self) -> ApiResult<Vec<Unit>> {
            Ok(self.0.lock().unwrap().values().cloned().collect())
        }
        async fn unit_states(&self) -> ApiResult<Vec<UnitState>> {
            Ok(Vec::new())
        }
        async fn unit_state(&self, _name: &str) -> ApiResult<Option<UnitState>> {
            Ok(None)
        }
        async fn create_unit(&self, unit: &Unit) -> ApiResult<()> {
            self.0
                .lock()
                .unwrap()
                .insert(unit.name.clone(), unit.clone());
            Ok(())
        }
        async fn set_unit_target_state(&self, _name: &str, _state: TargetState) -> ApiResult<()> {
            Ok(())
        }
        async fn destroy_unit(&self, _name: &str) -> ApiResult<()> {
            Ok(())
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Writes `text` to the file `name` in `dir`; its path.
    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// [`unit_file_for`] on the file at `path`, with an empty registry and
    /// warnings discarded.
    fn from_disk(path: &Path) -> anyhow::Result<UnitFile> {
        let (mut ui, _, _) = capture();
        block_on(unit_file_for(
            &Registry::default(),
            path.to_str().unwrap(),
            false,
            &mut ui,
        ))
    }

    #[test]
    fn names_are_mangled() {
        assert_eq!(unit_name("foo"), "foo.service");
        assert_eq!(unit_name("dir/foo.socket"), "foo.socket");
        assert_eq!(unit_name("foo.target"), "foo.target.service");
        assert_eq!(append_default_type("dir/foo"), "dir/foo.service");
        assert_eq!(append_default_type("dir/foo.timer"), "dir/foo.timer");
        assert_eq!(
            local_template_path("a/b/x@1.service", "x@.service"),
            Path::new("a/b/x@.service")
        );
        assert_eq!(
            local_template_path("x@1.service", "x@.service"),
            Path::new("x@.service")
        );
    }

    #[test]
    fn local_files_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "hello.service",
            "[Service]\nExecStart=/bin/true\n",
        );
        let file = from_disk(&path).unwrap();
        assert_eq!(file.canonical(), "[Service]\nExecStart=/bin/true\n");
    }

    #[test]
    fn bad_files_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "bad.service",
            "[Service]\nExecStart=/bin/true\ngarbage\n",
        );
        let arg = path.to_str().unwrap().to_owned();
        let err = from_disk(&path).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!("failed getting Unit({arg}) from file")),
            "{msg}"
        );
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn unwritable_values_name_file_line_and_option() {
        let dir = tempfile::tempdir().unwrap();
        for (text, line, problem) in [
            (
                "[Service]\nExecStart=/bin/sleep\u{0}1\n",
                2,
                r"value contains control character '\x00'",
            ),
            (
                "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/a\rb\n",
                4,
                r"value contains control character '\r'",
            ),
            (
                "[Service]\nExecStart=/bin/sh -c \\ \n  true\n",
                2,
                "value ends in a backslash, which would join it to the next line",
            ),
        ] {
            let path = write(dir.path(), "bad.service", text);
            let arg = path.to_str().unwrap().to_owned();
            let err = from_disk(&path).unwrap_err();
            assert_eq!(
                format!("{err:#}"),
                format!(
                    r#"failed getting Unit({arg}) from file: line {line}: option "ExecStart" in section "Service": {problem}"#
                ),
                "{text:?}"
            );
        }
        // Whitespace around values is trimmed, as the API stores it.
        let path = write(
            dir.path(),
            "spaced.service",
            "[Service]\nExecStart= /bin/sleep 1000 \n",
        );
        let file = from_disk(&path).unwrap();
        assert_eq!(file.canonical(), "[Service]\nExecStart=/bin/sleep 1000\n");
    }

    #[test]
    fn templates_come_from_the_registry_first() {
        let dir = tempfile::tempdir().unwrap();
        // A different local template: the registry's wins, with a warning.
        fs::write(
            dir.path().join("web@.service"),
            "[Service]\nExecStart=/bin/local\n",
        )
        .unwrap();
        let api = Registry::with(&[("web@.service", "[Service]\nExecStart=/bin/registry\n")]);
        let arg = dir.path().join("web@1.service");
        let arg = arg.to_str().unwrap();
        let (mut ui, _, err) = capture();
        let file = block_on(unit_file_for(&api, arg, false, &mut ui)).unwrap();
        assert_eq!(file.canonical(), "[Service]\nExecStart=/bin/registry\n");
        assert_eq!(
            err.text(),
            format!(
                "WARNING: Unit web@.service in registry differs from local template unit file {arg}. Add --replace to override.\n"
            )
        );
    }

    #[test]
    fn templates_come_from_disk_next_to_the_argument() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("web@.service"),
            "[Service]\nExecStart=/bin/local\n",
        )
        .unwrap();
        let arg = dir.path().join("web@1.service");
        let file = from_disk(&arg).unwrap();
        assert_eq!(file.canonical(), "[Service]\nExecStart=/bin/local\n");
    }

    #[test]
    fn missing_units_and_templates_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("nope.service");
        let err = from_disk(&plain).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unable to find Unit(nope.service) in Registry or on filesystem"
        );
        let inst = dir.path().join("nope@1.service");
        let err = from_disk(&inst).unwrap_err();
        assert!(
            format!("{err:#}").ends_with(
                "unable to find template Unit(nope@.service) in Registry or on filesystem"
            ),
            "{err:#}"
        );
    }

    #[test]
    fn local_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "a.service", "[Service]\nExecStart=/bin/a\n");
        let arg = path.to_str().unwrap();
        let same = Registry::with(&[("a.service", "[Service]\n# comment\nExecStart=/bin/a\n")]);
        let su = same.0.lock().unwrap()["a.service"].clone();
        let (mut ui, _, err) = capture();
        assert_eq!(
            compare_local(arg, &su, false, &mut ui).unwrap(),
            LocalMatch::Same
        );
        let other = Registry::with(&[("a.service", "[Service]\nExecStart=/bin/b\n")]);
        let su = other.0.lock().unwrap()["a.service"].clone();
        assert_eq!(
            compare_local(arg, &su, true, &mut ui).unwrap(),
            LocalMatch::Different
        );
        assert_eq!(err.text(), "", "no warning with --replace");
        assert_eq!(
            compare_local(arg, &su, false, &mut ui).unwrap(),
            LocalMatch::Different
        );
        assert!(
            err.text()
                .starts_with("WARNING: Unit a.service in registry differs from local unit file")
        );
        let missing = dir.path().join("zzz.service");
        assert_eq!(
            compare_local(missing.to_str().unwrap(), &su, true, &mut ui).unwrap(),
            LocalMatch::NoLocalFile
        );
    }

    #[test]
    fn facts_of_units() {
        let file = UnitFile::parse("[Unit]\nDescription=Hi\n\n[X-Fleet]\nGlobal=true\n").unwrap();
        let u = Unit {
            name: "g.service".into(),
            options: options_of(&file),
            ..Unit::default()
        };
        let f = facts(&u);
        assert!(f.global);
        assert_eq!(f.description.as_deref(), Some("Hi"));
        assert_eq!(f.hash, file.hash().to_string());
        assert!(!is_global(&Unit {
            name: "p.service".into(),
            ..Unit::default()
        }));
    }
}
