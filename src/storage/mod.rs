//! Storage: the redb tables, the record codec, the journal in front of redb, its file, and the
//! watch on its name.

pub(crate) mod codec;
pub(crate) mod journal;
pub(crate) mod journal_file;
pub(crate) mod journal_watch;
pub(crate) mod tables;

use std::path::Path;

/// Sync the folder holding `path`, so that a file just created, linked or renamed there keeps
/// its name after a power cut.
pub(crate) fn sync_folder_of(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}
