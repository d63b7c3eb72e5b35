//! A project on disk for tests of what reads and writes its folders (here
//! and in the worker's job kinds, with the `testing` feature).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::entities::project;
use crate::project_folders::FolderRules;

pub const SECRET: &[u8] = b"the secret outside the project";

/// A project under `allowed/p` with storage, functions and a `.env`, its
/// row as registered, and rules allowing it.
pub struct Project {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    pub root: PathBuf,
    /// Holds `secret.txt`, outside the project.
    pub outside: PathBuf,
    pub row: project::Model,
    pub rules: FolderRules,
}

pub fn project() -> Project {
    let data = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(allowed.path()).unwrap();
    let root = base.join("p");
    fs::create_dir_all(root.join("volumes/storage/stub/bucket")).unwrap();
    fs::create_dir_all(root.join("volumes/functions/hello")).unwrap();
    fs::write(
        root.join("volumes/storage/stub/bucket/photo.jpg"),
        b"original",
    )
    .unwrap();
    fs::write(root.join("volumes/functions/hello/index.ts"), b"serve()").unwrap();
    fs::write(root.join(".env"), b"POSTGRES_PASSWORD=x\n").unwrap();
    let outside = base.join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret.txt"), SECRET).unwrap();
    let config = Config {
        data_dir: data.path().to_path_buf(),
        project_roots: Some(base.to_string_lossy().into_owned()),
        ..Config::default()
    };
    let row = row_of(
        &root,
        &root.join("volumes/storage"),
        &root.join("volumes/functions"),
    );
    Project {
        _dirs: (data, allowed),
        rules: FolderRules::from_config(&config),
        root,
        outside,
        row,
    }
}

impl Project {
    /// Renames `relative` away (to `<relative>.moved`) and puts a symlink to
    /// the outside folder in its place; returns where it went.
    pub fn swap_for_symlink(&self, relative: &str) -> PathBuf {
        let live = self.root.join(relative);
        let moved = self.root.join(format!("{relative}.moved"));
        fs::rename(&live, &moved).unwrap();
        symlink(&self.outside, &live).unwrap();
        moved
    }
}

/// Path → content (folders and links with none) of a gzip'd artifact.
pub fn entries_of(artifact: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(artifact));
    let mut entries = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.insert(path, data);
    }
    entries
}

/// Project `p`'s row as registered with these (resolved) folders.
pub fn row_of(root: &Path, storage: &Path, functions: &Path) -> project::Model {
    project::Model {
        id: "p".into(),
        name: "P".into(),
        database_url_enc: String::new(),
        db_host: String::new(),
        db_port: 5432,
        db_name: String::new(),
        db_user: String::new(),
        root_dir: root.to_string_lossy().into(),
        storage_dir: storage.to_string_lossy().into(),
        functions_dir: functions.to_string_lossy().into(),
        config_paths: "[]".into(),
        post_restore_command: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    }
}
