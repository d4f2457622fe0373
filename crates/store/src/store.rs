//! A data directory: the lock, the catalog and the open projects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::catalog::Catalog;
use crate::lock::DirLock;
use crate::project::{ProjectOptions, ProjectStore};
use crate::{ProjectInfo, StoreError};

pub struct Store {
    dir: PathBuf,
    _lock: DirLock,
    options: ProjectOptions,
    catalog: RwLock<(Catalog, Option<SystemTime>)>,
    projects: RwLock<HashMap<String, Arc<ProjectStore>>>,
}

impl Store {
    /// Takes the directory lock and opens every project in the catalog.
    pub fn open(dir: &Path, options: ProjectOptions) -> Result<Store, StoreError> {
        let lock = DirLock::acquire(dir)?;
        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            options,
            catalog: RwLock::new((Catalog::default(), None)),
            projects: RwLock::new(HashMap::new()),
        };
        store.reload_catalog()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn catalog_mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(self.dir.join("catalog.json"))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Re-reads the catalog if it changed on disk and opens projects added since.
    pub fn reload_catalog(&self) -> Result<(), StoreError> {
        let mtime = self.catalog_mtime();
        if self.catalog.read().expect("catalog lock").1 == mtime && mtime.is_some() {
            return Ok(());
        }
        let catalog = Catalog::load(&self.dir)?;
        {
            let mut projects = self.projects.write().expect("projects lock");
            for p in &catalog.projects {
                if !projects.contains_key(&p.name) {
                    let dir = self.dir.join("projects").join(&p.name);
                    let ps = ProjectStore::open(&p.name, &dir, self.options.clone())?;
                    projects.insert(p.name.clone(), Arc::new(ps));
                }
            }
        }
        *self.catalog.write().expect("catalog lock") = (catalog, mtime);
        Ok(())
    }

    pub fn catalog(&self) -> Catalog {
        self.catalog.read().expect("catalog lock").0.clone()
    }

    pub fn project(&self, name: &str) -> Result<Arc<ProjectStore>, StoreError> {
        self.projects
            .read()
            .expect("projects lock")
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NoProject(name.to_string()))
    }

    /// The project a write key belongs to. The catalog is re-read when it changed on disk
    /// (a stat per call), so projects created and keys rotated while the server runs take
    /// effect at once: a rotated key stops working with the next request.
    pub fn by_write_key(&self, key: &str) -> Option<(ProjectInfo, Arc<ProjectStore>)> {
        self.lookup(|c| c.by_write_key(key).cloned())
    }

    /// The project an api key opens, on the same terms as [`Store::by_write_key`].
    pub fn by_api_key(&self, key: &str) -> Option<(ProjectInfo, Arc<ProjectStore>)> {
        self.lookup(|c| c.by_api_key(key).cloned())
    }

    /// `look` over the current catalog, re-read first when it changed on disk (so answers
    /// that depend on every project, such as a CORS preflight, see changes at once).
    pub fn with_catalog<T>(&self, look: impl FnOnce(&Catalog) -> T) -> T {
        if let Err(e) = self.reload_catalog() {
            tracing::warn!(error = %e, "catalog reload failed");
        }
        look(&self.catalog.read().expect("catalog lock").0)
    }

    fn lookup(
        &self,
        find: impl Fn(&Catalog) -> Option<ProjectInfo>,
    ) -> Option<(ProjectInfo, Arc<ProjectStore>)> {
        if let Err(e) = self.reload_catalog() {
            // The last good catalog keeps serving; the next call tries again.
            tracing::warn!(error = %e, "catalog reload failed");
        }
        let info = find(&self.catalog.read().expect("catalog lock").0)?;
        let ps = self.project(&info.name).ok()?;
        Some((info, ps))
    }

    pub fn projects(&self) -> Vec<Arc<ProjectStore>> {
        let mut v: Vec<_> = self
            .projects
            .read()
            .expect("projects lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Stops every writer after it has answered what is queued.
    pub fn close(&self) {
        for p in self.projects() {
            p.close();
        }
    }
}
