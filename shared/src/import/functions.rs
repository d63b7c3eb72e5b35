//! Edge functions from an uploaded archive, staged into a project's
//! `volumes/functions` and merged with what is there.
//!
//! # Layout
//!
//! - `./` prefixes are dropped; macOS's `__MACOSX/` folder and `.DS_Store`
//!   files are skipped without a word.
//! - Wrapper: when the archive's root holds exactly one folder and nothing
//!   else, and that folder has no entry file directly inside (so it is not
//!   itself a function), the folder is a wrapper and its content is the root.
//!   This covers `tar -czf functions.tar.gz -C supabase functions`
//!   (`functions/hello-world/index.ts`) and a ZIP of any folder of
//!   functions. One level only.
//! - Each folder at the root is a function and replaces the project's
//!   function of the same name wholesale. It must hold an entry file,
//!   `index.ts`, `index.js`, `index.tsx` or `index.mjs`, and its name must
//!   be one the Supabase CLI accepts (a letter, then letters, digits, `-`
//!   and `_`).
//! - Folders starting with `_` (`_shared/`) are shared code, not functions:
//!   staged as they are, without the entry-file check.
//! - Hidden folders (`.git/`, `.vscode/`) are skipped with a warning.
//! - Files and symlinks at the root (`README.md`, `deno.json`,
//!   `import_map.json`, `.env`) are skipped with a warning: in a self-hosted
//!   project each function carries its own `deno.json` or import map, and a
//!   root file would only shadow the project's own.
//! - An archive with no function at all is refused.
//!
//! # Merge
//!
//! Only the archive's top-level folders are swapped in
//! ([`Ready::merge_in`]); the project's other functions, the `main/`
//! router first of all, stay. Symlinks leading out of the functions folder
//! are refused; hard links only to an earlier entry of the archive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::ImportError;
use super::archive::{Detected, EntryInfo, EntryKind, list_entries, stage_entries};
use crate::restore::staging::{Limits, Options, Ready, StagedTree, SymlinkPolicy};

/// Names a function's folder must hold one of.
pub const ENTRY_FILES: [&str; 4] = ["index.ts", "index.js", "index.tsx", "index.mjs"];

/// Staged functions, ready for [`Ready::merge_in`].
pub struct FunctionsImport {
    pub ready: Ready,
    /// The functions the archive brings, sorted (shared `_` folders not
    /// included).
    pub functions: Vec<String>,
    /// What was skipped, for the user.
    pub warnings: Vec<String>,
}

/// Stages the functions of `archive` into `functions_dir` (see the module
/// doc for the accepted layouts).
pub fn stage_functions(
    archive: &Path,
    detected: &Detected,
    functions_dir: &Path,
    job_id: &str,
    limits: Limits,
    stop: &AtomicBool,
) -> Result<FunctionsImport, ImportError> {
    let entries = list_entries(archive, *detected, limits, stop)?;
    let plan = plan(&entries)?;
    let options = Options {
        symlinks: SymlinkPolicy::RejectEscaping,
        limits,
        archive_prefix: Some(plan.prefix.clone()),
        ..Options::default()
    };
    let mut tree = StagedTree::begin_with(functions_dir, job_id, options)?;
    tree.expect_bytes(super::archive::declared_bytes(&entries))?;
    tree.ignore_owners();
    stage_entries(archive, *detected, &mut tree, stop, |info| {
        Ok(plan.place(info))
    })?;
    let ready = tree.finish()?;
    Ok(FunctionsImport {
        ready,
        functions: plan.functions.into_iter().collect(),
        warnings: plan.warnings,
    })
}

/// Where the archive's entries go, decided from their names.
struct Plan {
    /// The wrapper folder, or empty.
    prefix: PathBuf,
    /// Top-level names (below the wrapper) that are staged.
    staged: BTreeSet<String>,
    functions: BTreeSet<String>,
    warnings: Vec<String>,
}

impl Plan {
    fn place(&self, info: &EntryInfo) -> Option<PathBuf> {
        if is_junk(info) {
            return None;
        }
        let rel = info.path.strip_prefix(&self.prefix).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        // A root file shares no name with a staged folder (see `plan`).
        if !self.staged.contains(first)
            || (rel.components().count() == 1 && info.kind != EntryKind::Dir)
        {
            return None;
        }
        Some(rel.to_path_buf())
    }
}

fn is_junk(info: &EntryInfo) -> bool {
    let names = info.names();
    names.first() == Some(&"__MACOSX") || names.last() == Some(&".DS_Store")
}

/// What sits at one top-level name.
#[derive(Default)]
struct Top {
    /// A folder entry or anything below it.
    folder: bool,
    /// A non-folder entry at the name itself.
    file: bool,
    /// Entry files directly inside.
    has_entry_file: bool,
}

fn tops<'a>(
    entries: impl Iterator<Item = &'a [&'a str]>,
    kinds: &[EntryKind],
) -> BTreeMap<String, Top> {
    let mut tops: BTreeMap<String, Top> = BTreeMap::new();
    for (names, kind) in entries.zip(kinds) {
        let Some(first) = names.first() else {
            continue;
        };
        let top = tops.entry((*first).to_string()).or_default();
        if names.len() > 1 || *kind == EntryKind::Dir {
            top.folder = true;
        } else {
            top.file = true;
        }
        if names.len() == 2 && *kind != EntryKind::Dir && ENTRY_FILES.contains(&names[1]) {
            top.has_entry_file = true;
        }
    }
    tops
}

fn plan(entries: &[EntryInfo]) -> Result<Plan, ImportError> {
    let useful: Vec<&EntryInfo> = entries.iter().filter(|e| !is_junk(e)).collect();
    let names: Vec<Vec<&str>> = useful.iter().map(|e| e.names()).collect();
    let kinds: Vec<EntryKind> = useful.iter().map(|e| e.kind).collect();
    let root = tops(names.iter().map(|n| n.as_slice()), &kinds);
    let mut prefix = PathBuf::new();
    let mut depth = 0;
    if let [(name, top)] = root.iter().collect::<Vec<_>>().as_slice()
        && top.folder
        && !top.file
        && !top.has_entry_file
    {
        prefix.push(name);
        depth = 1;
    }
    let inner: Vec<&[&str]> = names
        .iter()
        .map(|n| n.get(depth..).unwrap_or_default())
        .collect();
    let below = tops(inner.iter().copied(), &kinds);
    let mut plan = Plan {
        prefix,
        staged: BTreeSet::new(),
        functions: BTreeSet::new(),
        warnings: Vec::new(),
    };
    let wrapper = if depth == 1 {
        format!("{}/", plan.prefix.display())
    } else {
        String::new()
    };
    let shown = |name: &str| format!("{wrapper}{name}");
    for (name, top) in &below {
        if top.file && top.folder {
            // Both a file and a folder: the later entry would win in tar,
            // and which one is meant is a guess.
            return Err(ImportError::Invalid(format!(
                "{}: the archive has both a file and a folder of this name",
                shown(name)
            )));
        }
        if top.file {
            plan.warnings.push(format!(
                "{}: a file at the root is not a function; not imported",
                shown(name)
            ));
        } else if name.starts_with('.') {
            plan.warnings.push(format!(
                "{}/: a hidden folder is not a function; not imported",
                shown(name)
            ));
        } else if name.starts_with('_') {
            plan.staged.insert(name.clone());
        } else if !is_function_name(name) {
            return Err(ImportError::Invalid(format!(
                "{}/: {name:?} is not a function name (a letter, then letters, digits, - and _)",
                shown(name)
            )));
        } else if !top.has_entry_file {
            return Err(ImportError::Invalid(format!(
                "{}/ has no index.ts or index.js",
                shown(name)
            )));
        } else {
            plan.staged.insert(name.clone());
            plan.functions.insert(name.clone());
        }
    }
    if plan.functions.is_empty() {
        return Err(ImportError::Invalid(
            "the archive holds no function: expected folders like hello-world/index.ts at its \
             root or under one top folder"
                .into(),
        ));
    }
    Ok(plan)
}

fn is_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::archive::detect;
    use crate::import::testing::*;
    use std::fs;
    use std::process::Command;
    use tar::EntryType;

    struct Project {
        _root: tempfile::TempDir,
        uploads: tempfile::TempDir,
        functions: PathBuf,
    }

    /// A functions folder with the `main/` router and a `hello/` to replace.
    fn project() -> Project {
        let root = tempfile::tempdir().unwrap();
        let functions = root.path().join("functions");
        for (path, data) in [
            ("main/index.ts", "serve(router)"),
            ("hello/index.ts", "old hello"),
            ("hello/old.ts", "only in the old hello"),
            ("keep/index.js", "untouched"),
        ] {
            let path = functions.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        Project {
            _root: root,
            uploads: tempfile::tempdir().unwrap(),
            functions,
        }
    }

    fn import(
        project: &Project,
        name: &str,
        bytes: &[u8],
        limits: Limits,
    ) -> Result<FunctionsImport, ImportError> {
        let archive = upload(project.uploads.path(), name, bytes);
        let detected = detect(&archive).unwrap();
        stage_functions(&archive, &detected, &project.functions, JOB, limits, &GO)
    }

    fn read(project: &Project, path: &str) -> String {
        fs::read_to_string(project.functions.join(path)).unwrap()
    }

    #[test]
    fn root_layout_tar_gz_merges_and_rolls_back_exactly() {
        let project = project();
        let before = snapshot(&project.functions);
        let bytes = Tar::new()
            .dir("hello/")
            .file("hello/index.ts", b"new hello")
            .file("hello/lib/util.ts", b"util")
            .file("bye/index.js", b"bye")
            .file("_shared/cors.ts", b"cors")
            .file("README.md", b"readme")
            .link(EntryType::Symlink, "bye/util.ts", "../hello/lib/util.ts")
            .gz();
        let import = import(&project, "functions.tar.gz", &bytes, no_limits()).unwrap();
        assert_eq!(import.functions, ["bye", "hello"]);
        assert_eq!(import.warnings.len(), 1, "{:?}", import.warnings);
        assert!(
            import.warnings[0].starts_with("README.md: "),
            "{:?}",
            import.warnings
        );
        // Nothing visible before the swap.
        assert_eq!(read(&project, "hello/index.ts"), "old hello");
        let swapped = import.ready.merge_in().unwrap();
        assert_eq!(read(&project, "main/index.ts"), "serve(router)");
        assert_eq!(read(&project, "keep/index.js"), "untouched");
        assert_eq!(read(&project, "hello/index.ts"), "new hello");
        assert!(
            !project.functions.join("hello/old.ts").exists(),
            "replaced wholesale"
        );
        assert_eq!(read(&project, "bye/util.ts"), "util");
        assert_eq!(read(&project, "_shared/cors.ts"), "cors");
        assert!(!project.functions.join("README.md").exists());
        swapped.roll_back().unwrap();
        assert_eq!(snapshot(&project.functions), before);
    }

    #[test]
    fn merge_commit_keeps_the_router_and_leaves_no_hidden_folder() {
        let project = project();
        let bytes = Zip::new().file("hello/index.ts", b"new hello").bytes();
        let import = import(&project, "f.zip", &bytes, no_limits()).unwrap();
        import.ready.merge_in().unwrap().commit().unwrap();
        assert_eq!(names(&project.functions), ["hello", "keep", "main"]);
        assert_eq!(read(&project, "hello/index.ts"), "new hello");
        assert_eq!(read(&project, "main/index.ts"), "serve(router)");
    }

    #[test]
    fn functions_folder_made_by_the_real_tar() {
        let project = project();
        let src = tempfile::tempdir().unwrap();
        let functions = src.path().join("supabase/functions");
        for (path, data) in [
            ("hello-world/index.ts", "hi"),
            ("_shared/cors.ts", "cors"),
            ("import_map.json", "{}"),
        ] {
            let path = functions.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        let archive = project.uploads.path().join("functions.tar.gz");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(src.path().join("supabase"))
            .arg("functions")
            .status()
            .unwrap();
        assert!(status.success());
        let detected = detect(&archive).unwrap();
        assert_eq!(detected, Detected::TarGz);
        let import = stage_functions(
            &archive,
            &detected,
            &project.functions,
            JOB,
            no_limits(),
            &GO,
        )
        .unwrap();
        assert_eq!(import.functions, ["hello-world"]);
        assert_eq!(import.warnings.len(), 1);
        assert!(
            import.warnings[0].starts_with("functions/import_map.json"),
            "{:?}",
            import.warnings
        );
        import.ready.merge_in().unwrap().commit().unwrap();
        assert_eq!(read(&project, "hello-world/index.ts"), "hi");
        assert_eq!(read(&project, "_shared/cors.ts"), "cors");
        assert_eq!(
            names(&project.functions),
            ["_shared", "hello", "hello-world", "keep", "main"]
        );
    }

    #[test]
    fn zips_of_the_root_of_a_functions_folder_and_of_a_named_folder() {
        let project = project();
        let bytes = Zip::new()
            .dir("functions/")
            .file("functions/hello/index.ts", b"zipped")
            .file("functions/._junk", b"")
            .file("__MACOSX/functions/._hello", b"")
            .bytes();
        let import = import(&project, "f.zip", &bytes, no_limits()).unwrap();
        assert_eq!(import.functions, ["hello"]);
        drop(import);
        // A ZIP of a folder of any name, made by a real tool.
        let src = tempfile::tempdir().unwrap();
        let folder = src.path().join("my-edge-fns");
        fs::create_dir_all(folder.join("greet")).unwrap();
        fs::write(folder.join("greet/index.mjs"), "greet").unwrap();
        fs::write(folder.join("greet/deno.json"), "{}").unwrap();
        let archive = project.uploads.path().join("fns.zip");
        let script = "import shutil, sys; shutil.make_archive(sys.argv[1], 'zip', sys.argv[2], 'my-edge-fns')";
        let status = Command::new("python3")
            .args(["-c", script])
            .arg(archive.with_extension(""))
            .arg(src.path())
            .status()
            .unwrap();
        assert!(status.success());
        let detected = detect(&archive).unwrap();
        assert_eq!(detected, Detected::Zip);
        let import = stage_functions(
            &archive,
            &detected,
            &project.functions,
            JOB,
            no_limits(),
            &GO,
        )
        .unwrap();
        assert_eq!(import.functions, ["greet"]);
        import.ready.merge_in().unwrap().commit().unwrap();
        assert_eq!(read(&project, "greet/index.mjs"), "greet");
        assert_eq!(read(&project, "greet/deno.json"), "{}");
    }

    #[test]
    fn a_function_without_an_entry_file_or_no_function_at_all_is_refused() {
        let project = project();
        let before = snapshot(&project.functions);
        let bytes = Tar::new()
            .file("good/index.ts", b"")
            .file("broken/main.ts", b"")
            .gz();
        let message = assert_refused(
            import(&project, "f.tar.gz", &bytes, no_limits()),
            &project.functions,
            &before,
            &[],
        );
        assert_eq!(message, "broken/ has no index.ts or index.js");
        let bytes = Tar::new().file("README.md", b"").dir("_shared/").gz();
        assert_refused(
            import(&project, "f.tar.gz", &bytes, no_limits()),
            &project.functions,
            &before,
            &["no function"],
        );
    }

    /// One table of hostile archives, each checked the same way; long
    /// because the table is.
    #[test]
    fn hostile_archives_are_refused_and_change_nothing() {
        let zeros = vec![0u8; 2 << 20];
        let many = (0..20).fold(Tar::new(), |tar, i| {
            tar.file(&format!("f{i}/index.ts"), b"")
        });
        let whole = Tar::new()
            .file(
                "hello/index.ts",
                &(0..300_000u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
                    .collect::<Vec<_>>(),
            )
            .gz();
        let mut corrupt_zip = Zip::new().file("hello/index.ts", b"x").bytes();
        let len = corrupt_zip.len();
        corrupt_zip[len - 22..].fill(0x55);
        let limits = Limits {
            max_bytes: Some(1 << 20),
            max_entries: Some(10),
            ..Limits::default()
        };
        let cases: Vec<(&str, &str, Vec<u8>, Vec<&str>)> = vec![
            (
                "zip ..",
                "f.zip",
                Zip::new()
                    .file("hello/index.ts", b"")
                    .file("../evil", b"x")
                    .bytes(),
                vec!["../evil", "`..`"],
            ),
            (
                "tar ..",
                "f.tar",
                Tar::new()
                    .file("hello/index.ts", b"")
                    .raw("hello/../../evil", EntryType::Regular, b"x")
                    .bytes(),
                vec!["hello/../../evil", "`..`"],
            ),
            (
                "absolute",
                "f.tar",
                Tar::new()
                    .raw("/etc/evil/index.ts", EntryType::Regular, b"x")
                    .bytes(),
                vec!["/etc/evil/index.ts", "absolute"],
            ),
            (
                "drive letter",
                "f.zip",
                Zip::new().file("C:\\evil\\index.ts", b"x").bytes(),
                vec!["C:\\evil\\index.ts", "drive letter"],
            ),
            (
                "backslashes",
                "f.zip",
                Zip::new()
                    .file("hello/index.ts", b"")
                    .file("..\\..\\evil.ts", b"x")
                    .bytes(),
                vec!["..\\..\\evil.ts", "`..`"],
            ),
            (
                "tar symlink",
                "f.tar",
                Tar::new()
                    .file("hello/index.ts", b"")
                    .link(EntryType::Symlink, "hello/out", "../../outside")
                    .bytes(),
                vec!["hello/out", "leads out"],
            ),
            (
                "zip symlink",
                "f.zip",
                Zip::new()
                    .file("hello/index.ts", b"")
                    .symlink("hello/out", "/etc/passwd")
                    .bytes(),
                vec!["hello/out", "leads out"],
            ),
            (
                "hard link",
                "f.tar",
                Tar::new()
                    .file("hello/index.ts", b"")
                    .raw_link("hello/pw", "../../etc/passwd")
                    .bytes(),
                vec!["hello/pw", "hard link"],
            ),
            (
                "absolute hard link",
                "f.tar",
                Tar::new()
                    .file("hello/index.ts", b"")
                    .raw_link("hello/pw", "/etc/passwd")
                    .bytes(),
                vec!["hello/pw", "hard link"],
            ),
            (
                "fifo",
                "f.tar",
                Tar::new()
                    .file("hello/index.ts", b"")
                    .raw("hello/pipe", EntryType::Fifo, b"")
                    .bytes(),
                vec!["hello/pipe", "FIFO"],
            ),
            (
                "device",
                "f.tar",
                Tar::new()
                    .file("hello/index.ts", b"")
                    .raw("hello/null", EntryType::Char, b"")
                    .bytes(),
                vec!["hello/null", "device"],
            ),
            (
                "gzip bomb",
                "f.tar.gz",
                Tar::new().file("hello/index.ts", &zeros).gz(),
                vec!["hello/index.ts", "limit of 1048576 bytes"],
            ),
            (
                "zip bomb",
                "f.zip",
                Zip::new().file("hello/index.ts", &zeros).bytes(),
                vec!["hello/index.ts", "limit of 1048576 bytes"],
            ),
            (
                "too many entries",
                "f.tar",
                many.bytes(),
                vec!["limit of 10 entries"],
            ),
            (
                "truncated gzip",
                "f.tar.gz",
                whole[..whole.len() / 2].to_vec(),
                vec!["at or after hello/index.ts", "deflate"],
            ),
            (
                "truncated tar",
                "f.tar",
                Tar::new().file("hello/index.ts", &[7; 5000]).bytes()[..3000].to_vec(),
                vec!["hello/index.ts"],
            ),
            ("corrupt zip", "f.zip", corrupt_zip, vec!["ZIP archive"]),
            (
                "random bytes",
                "f.zip",
                (0..4096u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect(),
                vec!["not a ZIP or tar archive"],
            ),
        ];
        for (what, name, bytes, words) in cases {
            let project = project();
            let before = snapshot(&project.functions);
            if what.ends_with("bomb") {
                assert!(bytes.len() < 4096, "{what}: {} bytes", bytes.len());
            }
            let result = import(&project, name, &bytes, limits);
            let message = assert_refused(result, &project.functions, &before, &words);
            eprintln!("{what}: {message}");
        }
    }

    #[test]
    fn a_zip_claim_on_a_tar_is_refused_before_staging() {
        let project = project();
        let archive = upload(
            project.uploads.path(),
            "photos.zip",
            &Tar::new().file("a/index.ts", b"").gz(),
        );
        let detected = detect(&archive).unwrap();
        let allowed = [Detected::Zip, Detected::Tar, Detected::TarGz];
        assert_eq!(
            crate::import::archive::check_claim("photos.zip", &detected, &allowed).unwrap_err(),
            "photos.zip is not a ZIP archive (its content is a gzip-compressed tar archive)"
        );
    }
}
