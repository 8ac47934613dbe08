//! The units directory, where fleet keeps the files it links into systemd.
//!
//! Writes go to a hidden temporary file in the same directory and are renamed into place,
//! so systemd (and a restarted agent) never sees a half-written unit. Hidden files are
//! skipped when listing, which also hides temporaries left by a crash.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// Names that are safe as a single file name in the units directory. Full unit-name rules
/// belong to the `units` crate; this only keeps us inside the directory.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `dir/name` with mode 0644 via a temporary file and a rename.
pub(crate) fn write_atomic(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(contents.as_bytes())
            .map_err(io_err("write", &tmp))?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename into", &path))
    })();
    if result.is_err() {
        // Best effort: the temporary is hidden from listings anyway.
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Removes `dir/name`; a missing file is fine.
pub(crate) fn remove(dir: &Path, name: &str) -> Result<(), Error> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
        _ => Ok(()),
    }
}

/// The regular, non-hidden files in `dir` and their contents; a missing directory is empty.
pub(crate) fn list(dir: &Path) -> Result<BTreeMap<String, String>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let is_file = entry.file_type().map_err(io_err("stat", &path))?.is_file();
        if !is_file {
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(text) => {
                files.insert(name, text);
            }
            // Removed between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", &path)(e)),
        }
    }
    Ok(files)
}

/// Runs blocking file work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_directory() {
        for bad in ["", ".hidden", "../x.service", "a/b.service", "x\0.service"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("hello@1.service").unwrap();
    }

    #[test]
    fn write_list_remove() {
        let dir = std::env::temp_dir().join(format!("fleet-sd-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = write_atomic(&dir, "a.service", "[Service]\n").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        write_atomic(&dir, "a.service", "[Unit]\n").unwrap();
        fs::write(dir.join(".b.service.tmp-1-1"), "junk").unwrap();
        fs::create_dir(dir.join("sub.d")).unwrap();
        let files = list(&dir).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files["a.service"], "[Unit]\n");
        remove(&dir, "a.service").unwrap();
        remove(&dir, "a.service").unwrap();
        assert!(list(&dir).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
        assert!(list(&dir).unwrap().is_empty());
    }
}
