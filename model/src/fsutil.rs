//! File access for paths a user names: regular files only (a FIFO or a device named like a model
//! file or an image would block a read forever), reads with a bound, and writes that are either
//! complete and on disk or not there at all.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most a JSON or text file we read (configurations, adapter and run settings, indexes,
/// captions lists, the app's settings) may hold: far above any real one.
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// Whether `path` is a regular file (after following symlinks).
pub fn is_regular(path: &Path) -> bool {
    require_regular(path).is_ok()
}

/// Fails with `InvalidInput` when `path` exists but is not a regular file (a folder, FIFO,
/// socket or device), and says so when it is a symbolic link that leads nowhere (a loop or a
/// missing target); the ordinary error when it cannot be looked at.
pub fn require_regular(path: &Path) -> io::Result<()> {
    let meta = metadata(path)?;
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a folder"
    } else {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, format!("expected a regular file, found {what}")))
}

/// `std::fs::metadata`, except that a symbolic link which cannot be followed (a loop, or a
/// target that is missing) is named as such instead of "entity not found".
pub fn metadata(path: &Path) -> io::Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| match std::fs::symlink_metadata(path) {
        Ok(link) if link.file_type().is_symlink() => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a symbolic link that leads nowhere (a loop, or its target is missing: {})", describe_io(&e)),
        ),
        _ => e,
    })
}

/// Whether something is at `path`: `Ok(false)` when nothing is, an error naming the problem when
/// a name is there but cannot be followed (a symbolic link loop), instead of treating it as
/// absent.
pub fn exists(path: &Path) -> io::Result<bool> {
    match metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens a regular file for reading; refuses anything else before opening it.
pub fn open_regular(path: &Path) -> io::Result<File> {
    require_regular(path)?;
    File::open(path)
}

/// Reads a regular file whole (model and image files: their readers bound what they build).
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    require_regular(path)?;
    std::fs::read(path)
}

/// Reads at most `limit` bytes of a regular file; a longer file is an error that says the bound.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut out = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than the {} MiB this file may hold", limit >> 20)));
    }
    Ok(out)
}

/// Reads a regular file of at most [`MAX_TEXT_BYTES`] as UTF-8 text (a leading byte-order mark
/// removed).
pub fn read_regular_string(path: &Path) -> io::Result<String> {
    let bytes = read_bounded(path, MAX_TEXT_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// The temporary sibling a file is written to before it is renamed into place:
/// `NAME.partial` beside `NAME` (the whole name kept).
pub fn partial_name(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

/// `NAME` + `suffix` beside `NAME` (the whole name kept: `settings.json` → `settings.json.bad`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "file".into());
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `path` whole or not at all: `write` fills `NAME.partial`, which is flushed, synced to
/// disk and renamed to `NAME`; on any error (a full disk included) the temporary file is removed
/// and nothing is left under either name.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let tmp = partial_name(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = io::BufWriter::new(file);
        write(&mut w)?;
        w.flush()?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] of a byte string.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Flushes a folder's entries (new names, renames) to disk, so that a power loss after a rename
/// keeps it. A no-op where folders cannot be opened for syncing.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// [`sync_dir`] of the folder that holds `path`.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Syncs every file and folder under `dir` (a finished folder, before it is renamed into place).
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let t = entry.file_type()?;
        if t.is_dir() {
            sync_tree(&entry.path())?;
        } else if t.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// How old a `*.partial` file of ours must be before a later run removes it: writes take
/// milliseconds, so one this old was left by a process that was killed.
pub const STALE_PARTIAL: Duration = Duration::from_secs(60);

/// Whether an entry was last modified at least [`STALE_PARTIAL`] ago.
pub fn is_stale(meta: &std::fs::Metadata) -> bool {
    meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= STALE_PARTIAL)
}

/// Removes the leftovers of killed writes in `dir`: files whose name ends in `.partial` after
/// one of `suffixes` (e.g. `.png`), not modified for [`STALE_PARTIAL`]. Returns what was removed.
pub fn remove_stale_partials(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".partial") else { continue };
        if !suffixes.iter().any(|s| stem.ends_with(s)) {
            continue;
        }
        let stale = e.metadata().is_ok_and(|m| m.is_file() && is_stale(&m));
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// An exclusive lock on a folder, held while a process works in it (an OS file lock on
/// `DIR/NAME`, released when the lock is dropped or the process dies). The file records the
/// holder's process id, so a second process can say who has it.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    pub path: PathBuf,
}

impl FolderLock {
    /// Takes the lock or fails at once with an error naming the process that holds it.
    pub fn acquire(dir: &Path, name: &str) -> io::Result<Self> {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&file).take(64).read_to_string(&mut text);
                let holder = text.trim().parse::<u32>().map_or_else(|_| "another process".to_string(), |pid| format!("process {pid}"));
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is in use by {holder}; wait for it to finish or stop it first", dir.display()),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        file.set_len(0)?;
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file, path })
    }
}

/// What an `io::Error` says, without the " (os error N)" that `Display` appends; for messages
/// that also name the path.
pub fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.safetensors");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let e = read_regular(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("a FIFO"), "{e}");
        assert!(!is_regular(&fifo));
        let e = read_regular(dir.path()).unwrap_err();
        assert!(e.to_string().contains("a folder"), "{e}");
    }

    #[test]
    fn a_symlink_loop_is_named_and_bounded_reads_stop() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("loop");
        std::os::unix::fs::symlink(&link, &link).unwrap();
        let e = read_regular(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link that leads nowhere"), "{e}");
        assert!(exists(&link).is_err());
        assert!(!exists(&dir.path().join("absent")).unwrap());
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; 2048]).unwrap();
        assert!(read_bounded(&big, 1024).is_err());
        assert_eq!(read_bounded(&big, 2048).unwrap().len(), 2048);
        std::fs::write(&big, "\u{feff}{}").unwrap();
        assert_eq!(read_regular_string(&big).unwrap(), "{}");
    }

    #[test]
    fn a_failed_atomic_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let e = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_bytes_atomic(&path, b"whole").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_folder_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path(), "run.lock").unwrap();
        let e = FolderLock::acquire(dir.path(), "run.lock").unwrap_err();
        assert!(e.to_string().contains(&format!("process {}", std::process::id())), "{e}");
        drop(first);
        FolderLock::acquire(dir.path(), "run.lock").unwrap();
    }
}
