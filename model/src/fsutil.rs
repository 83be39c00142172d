//! File access for paths a user names: regular files only (a FIFO or a device named like a model
//! file or an image would block a read forever).

use std::fs::File;
use std::io;
use std::path::Path;

/// Whether `path` is a regular file (after following symlinks).
pub fn is_regular(path: &Path) -> bool {
    require_regular(path).is_ok()
}

/// Fails with `InvalidInput` when `path` exists but is not a regular file (a folder, FIFO,
/// socket or device), with the ordinary error when it cannot be looked at.
pub fn require_regular(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
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

/// Opens a regular file for reading; refuses anything else before opening it.
pub fn open_regular(path: &Path) -> io::Result<File> {
    require_regular(path)?;
    File::open(path)
}

/// Reads a regular file whole.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    require_regular(path)?;
    std::fs::read(path)
}

/// Reads a regular file whole as UTF-8 text.
pub fn read_regular_string(path: &Path) -> io::Result<String> {
    require_regular(path)?;
    std::fs::read_to_string(path)
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
}
