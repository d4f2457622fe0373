//! The small per-project files the query layer owns (asset registry, spend): written
//! whole and atomically, so a crash leaves the old file or the new one, never half.

use std::io::Write;
use std::path::{Path, PathBuf};

use throughline_store::StoreError;

use crate::QueryError;

/// Writes `bytes` to `project_dir/name`: a temp file, fsync, rename, directory fsync.
pub(crate) fn write(project_dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, QueryError> {
    let path = project_dir.join(name);
    let tmp = project_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let io = |p: &Path, e: std::io::Error| QueryError::Store(StoreError::io(p, e));
    let write = || -> Result<(), QueryError> {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        std::fs::File::open(project_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(project_dir, e))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(path)
}

/// The text of `project_dir/name`, or `None` when there is no such file.
pub(crate) fn read(project_dir: &Path, name: &str) -> Result<Option<String>, QueryError> {
    let path = project_dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(QueryError::Store(StoreError::io(&path, e))),
    }
}
